//! The operator's and the developer's commands end to end: `ferry admin user create`,
//! `ferry login`, `ferry workspace ...`, `ferry admin keys rotate`, with real
//! processes, and no password or token in the control plane's debug log.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

/// Runs `ferry ARGS` with `envs` and `stdin`; returns (success, stdout, stderr).
async fn ferry(args: &[&str], envs: &[(&str, String)], stdin: &str) -> (bool, String, String) {
    let mut cmd = Command::new(FERRY);
    cmd.args(args)
        .env_remove("FERRY_TOKEN")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn ferry");
    let mut input = child.stdin.take().expect("stdin");
    input
        .write_all(stdin.as_bytes())
        .await
        .expect("write stdin");
    drop(input);
    let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("ferry finished within 60s")
        .expect("ferry ran");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_creates_a_user_who_logs_in_and_reaches_a_workspace_with_no_secret_logged(
) -> anyhow::Result<()> {
    let mut net = Network::start("login").await?;
    net.start_relay("eu-1", "eu", "127.0.0.1:0").await?;
    let config = net.dir.0.join("cli-config.toml");
    let base = vec![
        ("FERRY_CONTROL_URL", net.control_url.clone()),
        ("FERRY_CA", net.ca_file.to_string_lossy().into_owned()),
        ("FERRY_CONFIG", config.to_string_lossy().into_owned()),
    ];
    let mut admin = base.clone();
    admin.push(("FERRY_ADMIN_TOKEN", net.admin_token.clone()));
    let password = "correct horse battery staple";

    let (ok, out, err) = ferry(
        &["admin", "user", "create", "alice", "--password-stdin"],
        &admin,
        &format!("{password}\n"),
    )
    .await;
    assert!(ok && out.contains("created user alice"), "{out}{err}");
    let (ok, _, err) = ferry(
        &["admin", "user", "create", "alice", "--no-password"],
        &admin,
        "",
    )
    .await;
    assert!(!ok && err.contains("user_exists"), "{err}");
    let (ok, out, _) = ferry(&["admin", "user", "list"], &admin, "").await;
    assert!(ok && out.contains("alice"), "{out}");

    let (ok, _, err) = ferry(
        &["login", "alice", "--password-stdin"],
        &base,
        "wrong password\n",
    )
    .await;
    assert!(!ok && err.contains("invalid_credentials"), "{err}");
    let (ok, out, err) = ferry(
        &["login", "alice", "--password-stdin"],
        &base,
        &format!("{password}\n"),
    )
    .await;
    assert!(ok && out.contains("logged in as alice"), "{out}{err}");
    let saved = std::fs::read_to_string(&config)?;
    let token = saved
        .lines()
        .find_map(|l| l.strip_prefix("token = "))
        .map(|t| t.trim_matches('"').to_string())
        .expect("token saved in the config");

    // From here on the CLI needs nothing but its config.
    let only_config = vec![("FERRY_CONFIG", config.to_string_lossy().into_owned())];
    let (ok, out, err) = ferry(&["workspace", "create", "demo"], &only_config, "").await;
    assert!(ok && out.contains("demo--alice"), "{out}{err}");
    let (ok, agent_token, err) =
        ferry(&["workspace", "agent-token", "demo"], &only_config, "").await;
    assert!(ok, "{err}");
    let echo = echo_server().await;
    let agent = spawn_ferry(
        &net.dir.0,
        "agent-demo--alice",
        &[
            "agent",
            "--control",
            &net.control_url,
            "--ca",
            net.ca_file.to_str().unwrap(),
        ],
        &[("FERRY_AGENT_TOKEN", agent_token.trim())],
    );
    net.agents.push(agent);
    net.wait_for_agent("demo--alice", &token).await?;
    let (ok, out, err) = ferry(&["tcp", "demo", &echo.to_string()], &only_config, "hi").await;
    assert!(ok && out == "hi", "{out}{err}");
    let (ok, out, _) = ferry(&["workspace", "agent-tokens", "demo"], &only_config, "").await;
    assert!(ok && out.contains("agent"), "{out}");

    let (ok, out, err) = ferry(&["admin", "keys", "rotate"], &admin, "").await;
    assert!(ok && out.contains("signing with key"), "{out}{err}");

    // The control plane logs at debug level in tests: still no secret in it.
    let log = std::fs::read_to_string(net.dir.0.join("control.log"))?;
    assert!(!log.contains(password), "the password is in the log");
    assert!(!log.contains(&token), "a session token is in the log");
    assert!(
        !log.contains(agent_token.trim()),
        "an agent token is in the log"
    );
    Ok(())
}
