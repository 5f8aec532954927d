//! Workspace labels: `NAME--OWNER`, the affinity key and the middle of every app
//! subdomain (`PORT--NAME--OWNER.apps.REGION.DOMAIN`).
//!
//! A label must fit in one DNS label together with a `PORT--` prefix (63 bytes), so it
//! is at most 56 bytes: lowercase ASCII letters, digits and single hyphens.

use std::fmt;

/// Longest label: 63 (DNS label) minus `65535--`.
pub const MAX_LABEL_LEN: usize = 56;

/// A validated workspace label, `name--owner`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkspaceLabel(String);

/// Why a string is not a workspace label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LabelError {
    #[error("workspace label `{0}` must look like NAME--OWNER")]
    MissingOwner(String),
    #[error("workspace label is longer than {MAX_LABEL_LEN} bytes")]
    TooLong,
    #[error("`{part}` is not a valid name: use lowercase letters, digits and single hyphens, not at the ends")]
    BadPart { part: String },
}

/// Checks one half of a label (a workspace name or a user name).
pub fn validate_name(part: &str) -> Result<(), LabelError> {
    let ok = !part.is_empty()
        && part.len() <= MAX_LABEL_LEN
        && part
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !part.starts_with('-')
        && !part.ends_with('-')
        && !part.contains("--");
    if ok {
        Ok(())
    } else {
        Err(LabelError::BadPart {
            part: part.chars().take(64).collect(),
        })
    }
}

impl WorkspaceLabel {
    /// Builds a label from a workspace name and its owner's user name.
    pub fn new(name: &str, owner: &str) -> Result<Self, LabelError> {
        validate_name(name)?;
        validate_name(owner)?;
        let label = format!("{name}--{owner}");
        if label.len() > MAX_LABEL_LEN {
            return Err(LabelError::TooLong);
        }
        Ok(WorkspaceLabel(label))
    }

    /// Parses `name--owner`.
    pub fn parse(s: &str) -> Result<Self, LabelError> {
        if s.len() > MAX_LABEL_LEN {
            return Err(LabelError::TooLong);
        }
        let (name, owner) = s
            .split_once("--")
            .ok_or_else(|| LabelError::MissingOwner(s.to_string()))?;
        Self::new(name, owner)
    }

    /// Resolves what a user typed: `demo` means the user's own `demo--USER`, and a
    /// full `name--owner` is taken as it is.
    pub fn resolve(input: &str, user: &str) -> Result<Self, LabelError> {
        if input.contains("--") {
            Self::parse(input)
        } else {
            Self::new(input, user)
        }
    }

    /// The workspace name (before `--`).
    pub fn name(&self) -> &str {
        self.0.split_once("--").map(|(n, _)| n).unwrap_or(&self.0)
    }

    /// The owner's user name (after `--`).
    pub fn owner(&self) -> &str {
        self.0.split_once("--").map(|(_, o)| o).unwrap_or("")
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for WorkspaceLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_short_names_to_the_users_own_workspace() {
        let l = WorkspaceLabel::resolve("demo", "dev").unwrap();
        assert_eq!(l.as_str(), "demo--dev");
        assert_eq!(l.name(), "demo");
        assert_eq!(l.owner(), "dev");
        let full = WorkspaceLabel::resolve("web--alice", "dev").unwrap();
        assert_eq!(full.owner(), "alice");
    }

    #[test]
    fn rejects_labels_that_would_break_dns_or_parsing() {
        for bad in [
            "",
            "demo",
            "--dev",
            "demo--",
            "Demo--dev",
            "a---b",
            "a--b--c",
            "a_b--c",
            "-a--b",
            "a--b-",
            "dé--mo",
        ] {
            assert!(WorkspaceLabel::parse(bad).is_err(), "{bad:?} was accepted");
        }
        let long = format!("{}--{}", "a".repeat(40), "b".repeat(20));
        assert_eq!(WorkspaceLabel::parse(&long), Err(LabelError::TooLong));
    }
}
