//! Headless Chromium driven over the DevTools protocol, for tests of pages (the web
//! terminal, the dashboard). Debian's `chromium`, talking CDP over
//! `--remote-debugging-pipe` (NUL-delimited JSON on fds 3 and 4), so no WebSocket
//! client and no fixed debugging port are needed.
//!
//! In CI a missing Chromium is a failure; locally [`Browser::launch`] answers `None`
//! after saying loudly that the test is skipped.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::pipe;
use tokio::process::{Child, Command};

/// Where Debian installs it.
pub const CHROMIUM: &str = "/usr/bin/chromium";

/// How long one DevTools command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Browser {
    child: Child,
    to_browser: pipe::Sender,
    from_browser: BufReader<pipe::Receiver>,
    /// The page's session: commands for the page carry it.
    session: String,
    next_id: u64,
    /// What the page logged (console calls and uncaught exceptions), for failures.
    pub console: Vec<String>,
}

impl Browser {
    /// Starts Chromium with a fresh profile under `profile_dir` and opens a blank page.
    /// It ignores certificate errors: ferry's test CA is not in its trust store, and
    /// what a page test checks is the page, not the CA (tests of TLS do that).
    pub async fn launch(test: &str, profile_dir: &Path) -> Result<Option<Browser>> {
        if !Path::new(CHROMIUM).exists() {
            assert!(
                std::env::var_os("CI").is_none(),
                "{test}: Chromium is not installed ({CHROMIUM}), and CI must run this test"
            );
            eprintln!("SKIPPED {test}: Chromium is not installed (apt-get install chromium)");
            return Ok(None);
        }
        // fd 3: commands to the browser; fd 4: its answers and events.
        let (commands_read, commands_write) = cloexec_pipe()?;
        let (answers_read, answers_write) = cloexec_pipe()?;
        let child_ends = [commands_read.as_raw_fd(), answers_write.as_raw_fd()];
        let mut cmd = Command::new(CHROMIUM);
        cmd.args([
            "--headless=new",
            "--remote-debugging-pipe",
            // Tests run as root in CI containers, where the sandbox cannot start.
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--ignore-certificate-errors",
            "--window-size=1280,900",
        ])
        .arg(format!("--user-data-dir={}", profile_dir.display()))
        .arg("about:blank")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::File::create(profile_dir.with_extension("chromium.log"))
                .context("chromium log file")?,
        ))
        .kill_on_drop(true);
        // SAFETY: only async-signal-safe calls (fcntl, dup2) between fork and exec.
        unsafe {
            cmd.pre_exec(move || place_fds(child_ends));
        }
        let child = cmd.spawn().context("start chromium")?;
        drop(commands_read);
        drop(answers_write);
        let mut browser = Browser {
            child,
            to_browser: pipe::Sender::from_owned_fd(commands_write)?,
            from_browser: BufReader::new(pipe::Receiver::from_owned_fd(answers_read)?),
            session: String::new(),
            next_id: 0,
            console: Vec::new(),
        };
        let target = browser
            .call("Target.createTarget", json!({ "url": "about:blank" }))
            .await?;
        let target_id = target["targetId"].as_str().context("targetId")?.to_string();
        let attached = browser
            .call(
                "Target.attachToTarget",
                json!({ "targetId": target_id, "flatten": true }),
            )
            .await?;
        browser.session = attached["sessionId"]
            .as_str()
            .context("sessionId")?
            .to_string();
        browser.call("Page.enable", json!({})).await?;
        browser.call("Runtime.enable", json!({})).await?;
        Ok(Some(browser))
    }

    /// Loads `url` and waits until its document has loaded.
    pub async fn navigate(&mut self, url: &str) -> Result<()> {
        let answer = self.call("Page.navigate", json!({ "url": url })).await?;
        if let Some(error) = answer["errorText"].as_str() {
            bail!("navigating to {url}: {error}");
        }
        self.wait_for(
            "document.readyState === 'complete'",
            Duration::from_secs(30),
        )
        .await?;
        Ok(())
    }

    /// Evaluates `expression` in the page (awaiting a promise) and returns its value.
    pub async fn eval(&mut self, expression: &str) -> Result<Value> {
        let answer = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expression, "returnByValue": true, "awaitPromise": true }),
            )
            .await?;
        if let Some(exception) = answer.get("exceptionDetails") {
            bail!("`{expression}` threw: {exception}");
        }
        Ok(answer["result"]["value"].clone())
    }

    /// Polls `condition` until it is truthy; returns its value.
    pub async fn wait_for(&mut self, condition: &str, timeout: Duration) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let value = self.eval(condition).await;
            match &value {
                Ok(v) if truthy(v) => return value,
                _ if Instant::now() > deadline => bail!(
                    "`{condition}` still not true after {timeout:?} (last: {value:?}); page console: {:#?}",
                    self.console
                ),
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// Types `text` key by key into the focused element, as a user would (`\r` or `\n`
    /// is the Enter key).
    pub async fn type_text(&mut self, text: &str) -> Result<()> {
        for c in text.chars() {
            let (key, code, text, key_code) = match c {
                '\r' | '\n' => (
                    "Enter".to_string(),
                    "Enter".to_string(),
                    "\r".to_string(),
                    13,
                ),
                c => (
                    c.to_string(),
                    String::new(),
                    c.to_string(),
                    c.to_ascii_uppercase() as u32,
                ),
            };
            self.call(
                "Input.dispatchKeyEvent",
                json!({ "type": "keyDown", "key": key, "code": code, "text": text,
                        "unmodifiedText": text, "windowsVirtualKeyCode": key_code }),
            )
            .await?;
            self.call(
                "Input.dispatchKeyEvent",
                json!({ "type": "keyUp", "key": key, "code": code, "windowsVirtualKeyCode": key_code }),
            )
            .await?;
        }
        Ok(())
    }

    /// Saves a PNG of the viewport to `path`.
    pub async fn screenshot(&mut self, path: &Path) -> Result<PathBuf> {
        use base64::Engine as _;
        let answer = self
            .call("Page.captureScreenshot", json!({ "format": "png" }))
            .await?;
        let png = base64::engine::general_purpose::STANDARD
            .decode(answer["data"].as_str().context("screenshot data")?)
            .context("screenshot base64")?;
        std::fs::write(path, png).with_context(|| format!("write {}", path.display()))?;
        Ok(path.to_path_buf())
    }

    /// Sends one DevTools command (to the page once attached) and waits for its answer,
    /// keeping the page's console output on the way.
    pub async fn call(&mut self, method: &str, params: Value) -> Result<Value> {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if !self.session.is_empty() {
            message["sessionId"] = json!(self.session);
        }
        let mut bytes = serde_json::to_vec(&message)?;
        bytes.push(0);
        self.to_browser.write_all(&bytes).await?;
        tokio::time::timeout(COMMAND_TIMEOUT, self.answer_to(id))
            .await
            .map_err(|_| anyhow!("chromium did not answer {method} within {COMMAND_TIMEOUT:?}"))?
            .with_context(|| format!("DevTools {method}"))
    }

    async fn answer_to(&mut self, id: u64) -> Result<Value> {
        let mut buf = Vec::new();
        loop {
            buf.clear();
            let n = self.from_browser.read_until(0, &mut buf).await?;
            if n == 0 {
                bail!(
                    "chromium closed its DevTools pipe (exit: {:?})",
                    self.child.try_wait()
                );
            }
            if buf.last() == Some(&0) {
                buf.pop();
            }
            let message: Value = serde_json::from_slice(&buf)?;
            if message["id"].as_u64() == Some(id) {
                if let Some(error) = message.get("error") {
                    bail!("{error}");
                }
                return Ok(message["result"].clone());
            }
            self.keep_console(&message);
        }
    }

    fn keep_console(&mut self, event: &Value) {
        match event["method"].as_str() {
            Some("Runtime.consoleAPICalled") => {
                let args: Vec<String> = event["params"]["args"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|a| a.get("value").unwrap_or(&a["description"]).to_string())
                    .collect();
                self.console.push(format!(
                    "console.{}: {}",
                    event["params"]["type"].as_str().unwrap_or("log"),
                    args.join(" ")
                ));
            }
            Some("Runtime.exceptionThrown") => self.console.push(format!(
                "exception: {}",
                event["params"]["exceptionDetails"]
            )),
            _ => {}
        }
    }
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

fn cloexec_pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: fds has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    // SAFETY: pipe2 just returned these two descriptors, owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// In the child: moves the pipe ends to fds 3 and 4 (without close-on-exec). Both are
/// first copied above 4, in case one of them already sits on 3 or 4.
fn place_fds(ends: [RawFd; 2]) -> std::io::Result<()> {
    let mut high = [0; 2];
    for (end, copy) in ends.into_iter().zip(&mut high) {
        // SAFETY: a plain descriptor call on a descriptor this process owns.
        *copy = unsafe { libc::fcntl(end, libc::F_DUPFD_CLOEXEC, 10) };
        if *copy < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    for (copy, target) in high.into_iter().zip([3, 4]) {
        // SAFETY: as above; dup2 leaves the new descriptor open across exec.
        if unsafe { libc::dup2(copy, target) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}
