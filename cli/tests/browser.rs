//! The headless-Chromium driver that page tests use works: it loads a page, types into
//! it key by key, reads the page back and takes a screenshot.

mod common;

use std::time::Duration;

use common::browser::Browser;
use common::TempDir;

#[tokio::test]
async fn the_browser_driver_types_into_a_page_and_reads_it_back() {
    let dir = TempDir::new("browser");
    let Some(mut browser) = Browser::launch("browser driver", &dir.0.join("profile"))
        .await
        .unwrap()
    else {
        return;
    };
    let page = "data:text/html,<textarea id=t autofocus></textarea>\
        <script>document.getElementById('t').addEventListener('keydown', e => {\
        if (e.key === 'Enter') document.title = 'entered: ' + e.target.value; })</script>";
    browser.navigate(page).await.unwrap();
    browser
        .eval("document.getElementById('t').focus()")
        .await
        .unwrap();
    browser.type_text("echo ok\r").await.unwrap();
    let title = browser
        .wait_for("document.title", Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(title, "entered: echo ok");
    let png = browser.screenshot(&dir.0.join("page.png")).await.unwrap();
    let bytes = std::fs::read(png).unwrap();
    assert_eq!(&bytes[1..4], b"PNG");
}
