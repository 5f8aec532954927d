//! The web terminal in headless Chromium, through real `ferry control`, `ferry relay
//! --apps-domain` and `ferry agent` processes: the browser opens the terminal's
//! address, is sent to the control plane's sign-in page, signs in with a password,
//! comes back with an app cookie, and types into a shell on a real PTY.

mod common;

use std::time::Duration;

use common::browser::Browser;
use common::Network;
use ferry_proto::api::{CreateUserRequest, UserInfo};

const APPS: &str = "apps.eu.localhost";

/// Every line of the xterm.js screen and scrollback, as text.
const SCREEN: &str = "(() => { const b = window.ferryTerminal.buffer.active; const lines = []; \
    for (let i = 0; i < b.length; i++) lines.push(b.getLine(i).translateToString(true)); \
    return lines; })()";

#[tokio::test]
async fn the_terminal_page_signs_in_types_echo_ok_and_reads_ok_back() {
    let mut net = Network::start("web-terminal").await.unwrap();
    let Some(mut browser) = Browser::launch("web terminal", &net.dir.0.join("chromium-profile"))
        .await
        .unwrap()
    else {
        return;
    };
    let relay = net
        .start_relay_with("eu-1", "eu", "127.0.0.1:0", &["--apps-domain", APPS])
        .await
        .unwrap();
    let password = "correct horse battery";
    let _: UserInfo = net
        .control_client()
        .post(
            "/api/v1/users",
            Some(&net.admin_token),
            &CreateUserRequest {
                name: "carol".into(),
                password: Some(password.into()),
            },
        )
        .await
        .unwrap();
    net.start_agent("box--carol", &["--shell", "/bin/sh"])
        .await
        .unwrap();
    let user = net
        .mint(ferry_proto::token::TokenKind::User, "carol", None)
        .await
        .unwrap();
    net.wait_for_agent("box--carol", &user).await.unwrap();

    // The browser lands on the control plane's sign-in page...
    let url = format!("https://terminal--box--carol.{APPS}:{}/", relay.port());
    browser.navigate(&url).await.unwrap();
    let at = browser.eval("location.href").await.unwrap();
    assert!(
        at.as_str()
            .unwrap()
            .starts_with(&format!("{}/app-auth?", net.control_url)),
        "{at}"
    );
    browser
        .wait_for(
            "!!document.getElementById('password')",
            Duration::from_secs(10),
        )
        .await
        .unwrap();
    browser
        .eval(&format!(
            "document.getElementById('user').value = 'carol'; \
             document.getElementById('password').value = '{password}'; \
             document.getElementById('login').requestSubmit(); true"
        ))
        .await
        .unwrap();
    // ...and, signed in, comes back to the terminal with a live socket.
    browser
        .wait_for(
            "location.hostname.startsWith('terminal--') && !!window.ferrySocket && window.ferrySocket.readyState === 1",
            Duration::from_secs(30),
        )
        .await
        .unwrap();
    // Type once the shell is there (its prompt is on the screen).
    browser
        .wait_for(
            &format!("{SCREEN}.some(l => l.trim().length > 0)"),
            Duration::from_secs(20),
        )
        .await
        .unwrap();
    browser
        .eval("window.ferryTerminal.focus(); true")
        .await
        .unwrap();
    browser.type_text("echo ok\r").await.unwrap();
    let found = browser
        .wait_for(
            &format!("{SCREEN}.some(l => /^([#$%>] )?ok$/.test(l.trim()))"),
            Duration::from_secs(20),
        )
        .await;
    if found.is_err() {
        let screen = browser.eval(SCREEN).await.unwrap_or_default();
        let _ = browser.screenshot(&net.dir.0.join("terminal.png")).await;
        panic!(
            "no `ok` line on the terminal: {screen:#}; console {:#?}",
            browser.console
        );
    }

    // Resizing the terminal resizes the PTY.
    browser
        .eval("window.ferryTerminal.resize(100, 30); true")
        .await
        .unwrap();
    browser.type_text("stty size\r").await.unwrap();
    browser
        .wait_for(
            &format!("{SCREEN}.some(l => /^([#$%>] )?30 100$/.test(l.trim()))"),
            Duration::from_secs(20),
        )
        .await
        .unwrap();
    let png = browser
        .screenshot(&net.dir.0.join("terminal.png"))
        .await
        .unwrap();
    assert!(std::fs::metadata(png).unwrap().len() > 0);
}
