//! Custom metadata items: what the agent's operator asked it to report (a git branch,
//! a test status, a version), each read by a shell command or from a file on its own
//! interval.
//!
//! A command runs in its own process group with a timeout: at the deadline the whole
//! group is killed (a shell's children too, which would otherwise hold the output
//! pipe open), and the item reads as an error. Output is truncated to
//! [`MAX_OUTPUT`] bytes. A failure of any kind is an error value for that item, never
//! a failure of the agent.

use std::path::PathBuf;
use std::time::Duration;

use ferry_proto::api::MetadataItem;
use tokio::io::AsyncReadExt;

/// Most bytes of a command's output (or a file) reported; more is cut, marked `…`.
pub const MAX_OUTPUT: usize = 1024;
/// Most bytes of a failed command's standard error kept in its error message.
const MAX_STDERR: usize = 256;

/// Where an item's value comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemSource {
    /// A command line for `/bin/sh -c`: its standard output, trimmed.
    Command(String),
    /// A file's contents, trimmed (cheaper than a process when that is all it takes).
    File(PathBuf),
}

/// One item the operator defined.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemSpec {
    /// The key it is stored under (`a-z 0-9 _ . -`).
    pub key: String,
    /// What people see; the key when unset.
    pub name: Option<String>,
    pub source: ItemSource,
    /// How often it is read.
    pub interval: Duration,
    /// How long a command may run.
    pub timeout: Duration,
}

/// Reads `spec` once: its value, or an error value.
pub async fn read_item(spec: &ItemSpec) -> MetadataItem {
    let outcome = match &spec.source {
        ItemSource::Command(line) => run_command(line, spec.timeout).await,
        ItemSource::File(path) => read_file(path).await,
    };
    let (value, error) = match outcome {
        Ok(v) => (v, None),
        Err(e) => (String::new(), Some(e)),
    };
    MetadataItem {
        key: spec.key.clone(),
        value,
        name: spec.name.clone(),
        error,
    }
}

async fn read_file(path: &std::path::Path) -> Result<String, String> {
    let file = tokio::fs::File::open(path)
        .await
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut buf = Vec::new();
    file.take(MAX_OUTPUT as u64 + 1)
        .read_to_end(&mut buf)
        .await
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok(clean(&buf, MAX_OUTPUT))
}

/// Runs `line` with `/bin/sh -c`, for at most `timeout`.
pub async fn run_command(line: &str, timeout: Duration) -> Result<String, String> {
    let mut child = tokio::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(line)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        // Its own group, so a timeout kills what the shell started too.
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run the command: {e}"))?;
    let pid = child.id();
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let run = async {
        // Read both pipes to their end (keeping only the head), so a chatty command
        // never blocks on a full pipe, then collect the exit status.
        let (out, err) = tokio::join!(
            read_head(stdout.as_mut(), MAX_OUTPUT),
            read_head(stderr.as_mut(), MAX_STDERR)
        );
        let status = child.wait().await;
        (out, err, status)
    };
    match tokio::time::timeout(timeout, run).await {
        Ok((out, _, Ok(status))) if status.success() => Ok(clean(&out, MAX_OUTPUT)),
        Ok((_, err, Ok(status))) => {
            let stderr = clean(&err, MAX_STDERR);
            let how = match status.code() {
                Some(code) => format!("exit status {code}"),
                None => "killed by a signal".to_string(),
            };
            Err(if stderr.is_empty() {
                format!("the command failed ({how})")
            } else {
                format!("the command failed ({how}): {stderr}")
            })
        }
        Ok((_, _, Err(e))) => Err(format!("waiting for the command: {e}")),
        Err(_) => {
            if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
                // SAFETY: a plain signal to the group we created; at worst it is gone.
                unsafe {
                    libc::kill(-pid, libc::SIGKILL);
                }
            }
            // `kill_on_drop` reaps the shell itself when `child` goes.
            Err(format!(
                "the command did not finish within {:.1} s",
                timeout.as_secs_f64()
            ))
        }
    }
}

/// Reads `pipe` to its end, keeping the first `keep` + 1 bytes (one more than the
/// limit, so truncation shows).
async fn read_head<R: tokio::io::AsyncRead + Unpin>(pipe: Option<&mut R>, keep: usize) -> Vec<u8> {
    let Some(pipe) = pipe else {
        return Vec::new();
    };
    let mut head = Vec::with_capacity(keep.min(4096) + 1);
    let mut chunk = [0u8; 4096];
    loop {
        match pipe.read(&mut chunk).await {
            Ok(0) | Err(_) => return head,
            Ok(n) => {
                let room = (keep + 1).saturating_sub(head.len());
                head.extend_from_slice(&chunk[..n.min(room)]);
            }
        }
    }
}

/// Output as a value: UTF-8 (invalid bytes replaced), trailing whitespace trimmed,
/// cut to at most `max` bytes on a character boundary with `…` when it was longer.
pub fn clean(raw: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(raw);
    let text = text.trim_end();
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max.saturating_sub('…'.len_utf8());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn command(line: &str, timeout: Duration) -> ItemSpec {
        ItemSpec {
            key: "k".into(),
            name: Some("K".into()),
            source: ItemSource::Command(line.into()),
            interval: Duration::from_secs(10),
            timeout,
        }
    }

    #[tokio::test]
    async fn a_command_reports_its_trimmed_output() {
        let item = read_item(&command("printf 'main\\n\\n'", Duration::from_secs(10))).await;
        assert_eq!(item.value, "main");
        assert_eq!(item.error, None);
        assert_eq!(item.name.as_deref(), Some("K"));
    }

    #[tokio::test]
    async fn a_command_that_hangs_is_cut_at_its_timeout_with_its_children() {
        let started = Instant::now();
        // The shell's child keeps the output pipe open: only killing the group ends it.
        let item = read_item(&command(
            "echo partial; sleep 30 & sleep 30",
            Duration::from_millis(300),
        ))
        .await;
        let took = started.elapsed();
        assert!(took < Duration::from_secs(5), "took {took:?}");
        assert_eq!(item.value, "");
        let error = item.error.expect("an error value");
        assert!(error.contains("did not finish within 0.3 s"), "{error}");
    }

    #[tokio::test]
    async fn a_failing_command_is_an_error_value_with_its_stderr() {
        let item = read_item(&command("echo nope >&2; exit 3", Duration::from_secs(10))).await;
        assert_eq!(
            item.error.as_deref(),
            Some("the command failed (exit status 3): nope")
        );
        let missing = read_item(&command("/nonexistent/tool", Duration::from_secs(10))).await;
        assert!(missing.error.unwrap().contains("exit status 127"));
    }

    #[tokio::test]
    async fn long_output_is_truncated_to_the_limit() {
        let item = read_item(&command(
            "head -c 100000 /dev/zero | tr '\\0' x",
            Duration::from_secs(10),
        ))
        .await;
        assert_eq!(item.error, None);
        assert!(item.value.len() <= MAX_OUTPUT, "{}", item.value.len());
        assert!(item.value.ends_with('…'));
        assert!(item.value.starts_with("xxxx"));
    }

    #[tokio::test]
    async fn a_file_item_reads_the_file_or_says_why_not() {
        let path = std::env::temp_dir().join(format!("ferry-item-{}", std::process::id()));
        std::fs::write(&path, "v1.2.3\n").unwrap();
        let spec = ItemSpec {
            source: ItemSource::File(path.clone()),
            ..command("", Duration::from_secs(1))
        };
        assert_eq!(read_item(&spec).await.value, "v1.2.3");
        std::fs::remove_file(&path).unwrap();
        assert!(read_item(&spec)
            .await
            .error
            .unwrap()
            .contains("cannot read"));
    }

    #[test]
    fn clean_cuts_on_a_character_boundary() {
        assert_eq!(clean(b"abc \n", 10), "abc");
        let s = "é".repeat(10); // 20 bytes
        let cut = clean(s.as_bytes(), 8);
        assert!(cut.len() <= 8 && cut.ends_with('…'), "{cut}");
        assert_eq!(clean(&[0xff, b'a'], 10), "\u{fffd}a");
    }
}
