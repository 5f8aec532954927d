//! `ferry agent`'s custom metadata items, from `--metadata KEY=COMMAND` flags and a
//! `--metadata-file` TOML file, checked once at start: a bad item is a clear error
//! before the agent runs, never a surprise at the first report.
//!
//! ```toml
//! [[item]]
//! key = "branch"                  # a-z 0-9 _ . -, at most 64 characters
//! name = "Git branch"             # shown instead of the key (optional)
//! command = "git -C /workspace rev-parse --abbrev-ref HEAD"   # or: file = "/path"
//! interval_secs = 10              # default: the report interval
//! timeout_secs = 5                # default: 5, at most the interval
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use ferry_agent::telemetry::{ItemSource, ItemSpec, DEFAULT_ITEM_TIMEOUT};
use ferry_proto::api::{MetadataItem, MAX_METADATA_KEYS, MAX_METADATA_NAME_LEN};

/// Shortest interval an item may be read at.
const MIN_INTERVAL: Duration = Duration::from_millis(200);

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    item: Vec<FileItem>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FileItem {
    key: String,
    name: Option<String>,
    command: Option<String>,
    file: Option<PathBuf>,
    interval_secs: Option<f64>,
    timeout_secs: Option<f64>,
}

/// The items of `flags` (`KEY=COMMAND`) and of the TOML file at `file`, read every
/// `interval` unless the file says otherwise.
pub fn items(flags: &[String], file: Option<&Path>, interval: Duration) -> Result<Vec<ItemSpec>> {
    let mut out = Vec::new();
    for flag in flags {
        let Some((key, command)) = flag.split_once('=') else {
            bail!("--metadata `{flag}`: write KEY=COMMAND");
        };
        out.push(
            item(
                FileItem {
                    key: key.trim().to_string(),
                    name: None,
                    command: Some(command.to_string()),
                    file: None,
                    interval_secs: None,
                    timeout_secs: None,
                },
                interval,
            )
            .with_context(|| format!("--metadata `{key}`"))?,
        );
    }
    if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the metadata file {}", path.display()))?;
        out.extend(parse_file(&text, interval).with_context(|| path.display().to_string())?);
    }
    if out.len() > MAX_METADATA_KEYS {
        bail!(
            "{} metadata items; the control plane keeps at most {MAX_METADATA_KEYS}",
            out.len()
        );
    }
    for (i, a) in out.iter().enumerate() {
        if out[..i].iter().any(|b| b.key == a.key) {
            bail!("metadata item `{}` is defined twice", a.key);
        }
    }
    Ok(out)
}

/// The items of a metadata TOML file.
pub fn parse_file(text: &str, interval: Duration) -> Result<Vec<ItemSpec>> {
    let file: File = toml::from_str(text).context("not a metadata file")?;
    file.item
        .into_iter()
        .map(|i| {
            let key = i.key.clone();
            item(i, interval).with_context(|| format!("item `{key}`"))
        })
        .collect()
}

fn seconds(what: &str, secs: f64) -> Result<Duration> {
    Duration::try_from_secs_f64(secs)
        .ok()
        .filter(|d| *d >= MIN_INTERVAL && *d <= Duration::from_secs(24 * 3600))
        .with_context(|| format!("{what} = {secs}: use 0.2 to 86400 seconds"))
}

fn item(i: FileItem, interval: Duration) -> Result<ItemSpec> {
    // The key rules are the control plane's: refuse here what it would refuse.
    MetadataItem {
        key: i.key.clone(),
        ..Default::default()
    }
    .check()
    .map_err(|e| anyhow::anyhow!("{e}"))?;
    if i.name
        .as_ref()
        .is_some_and(|n| n.len() > MAX_METADATA_NAME_LEN)
    {
        bail!("name: at most {MAX_METADATA_NAME_LEN} bytes");
    }
    let source = match (i.command, i.file) {
        (Some(c), None) if !c.trim().is_empty() => ItemSource::Command(c),
        (None, Some(f)) => ItemSource::File(f),
        _ => bail!("give either `command` or `file`"),
    };
    let interval = match i.interval_secs {
        Some(s) => seconds("interval_secs", s)?,
        None => interval.max(MIN_INTERVAL),
    };
    let timeout = match i.timeout_secs {
        Some(s) => seconds("timeout_secs", s)?,
        None => DEFAULT_ITEM_TIMEOUT,
    };
    if timeout > interval && i.timeout_secs.is_some() {
        bail!(
            "timeout_secs ({} s) is longer than the interval ({} s)",
            timeout.as_secs_f64(),
            interval.as_secs_f64()
        );
    }
    Ok(ItemSpec {
        key: i.key,
        name: i.name,
        source,
        interval,
        // A default timeout never outlasts a short interval.
        timeout: timeout.min(interval),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEN: Duration = Duration::from_secs(10);

    #[test]
    fn a_file_and_flags_make_items() {
        let file = r#"
            [[item]]
            key = "branch"
            name = "Git branch"
            command = "git rev-parse --abbrev-ref HEAD"
            interval_secs = 30
            timeout_secs = 2

            [[item]]
            key = "version"
            file = "/etc/os-release"
        "#;
        let items = parse_file(file, TEN).unwrap();
        assert_eq!(items.len(), 2);
        assert_eq!(items[0].name.as_deref(), Some("Git branch"));
        assert_eq!(items[0].interval, Duration::from_secs(30));
        assert_eq!(items[0].timeout, Duration::from_secs(2));
        assert_eq!(
            items[1].source,
            ItemSource::File(PathBuf::from("/etc/os-release"))
        );
        assert_eq!(items[1].interval, TEN);
        assert_eq!(items[1].timeout, DEFAULT_ITEM_TIMEOUT);

        let flags = items_of(&["who=whoami"], Duration::from_secs(1));
        assert_eq!(flags[0].source, ItemSource::Command("whoami".into()));
        // The default timeout shrinks to a short interval.
        assert_eq!(flags[0].timeout, Duration::from_secs(1));
    }

    fn items_of(flags: &[&str], interval: Duration) -> Vec<ItemSpec> {
        let flags: Vec<String> = flags.iter().map(|s| s.to_string()).collect();
        items(&flags, None, interval).unwrap()
    }

    #[test]
    fn bad_items_are_refused_with_the_reason() {
        let cases = [
            (
                "[[item]]\nkey = \"Bad Key\"\ncommand = \"x\"",
                "key `Bad Key`",
            ),
            ("[[item]]\nkey = \"a\"", "either `command` or `file`"),
            (
                "[[item]]\nkey = \"a\"\ncommand = \"x\"\nfile = \"/y\"",
                "either `command` or `file`",
            ),
            (
                "[[item]]\nkey = \"a\"\ncommand = \"x\"\ninterval_secs = 0",
                "interval_secs = 0",
            ),
            (
                "[[item]]\nkey = \"a\"\ncommand = \"x\"\ninterval_secs = 5\ntimeout_secs = 9",
                "longer than the interval",
            ),
            (
                "[[item]]\nkey = \"a\"\ncommand = \"x\"\ncolour = 1",
                "unknown field",
            ),
        ];
        for (file, want) in cases {
            let err = format!("{:#}", parse_file(file, TEN).unwrap_err());
            assert!(err.contains(want), "{file:?}: {err}");
        }
        let flags = vec!["a=x".to_string(), "a=y".to_string()];
        let err = items(&flags, None, TEN).unwrap_err().to_string();
        assert!(err.contains("defined twice"), "{err}");
        let err = items(&["nothing".to_string()], None, TEN)
            .unwrap_err()
            .to_string();
        assert!(err.contains("KEY=COMMAND"), "{err}");
    }
}
