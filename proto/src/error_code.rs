//! Typed error codes carried in error frames, QUIC close codes and HTTP API errors.
//!
//! Codes are stable on the wire: add new ones, never renumber. Unknown codes from a
//! newer peer decode as [`ErrorCode::Other`] so an old client still prints the message.

/// What went wrong, in a form a program can branch on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorCode {
    /// The peer sent bytes that are not valid ferry protocol.
    Protocol,
    /// The token is missing, malformed, or its signature does not verify.
    Unauthorized,
    /// The token has expired.
    TokenExpired,
    /// The token is valid but of the wrong kind or audience for this use.
    WrongTokenKind,
    /// The workspace does not exist or is not yours (deliberately indistinguishable).
    UnknownWorkspace,
    /// The workspace exists but no agent is connected for it.
    AgentNotConnected,
    /// The agent could not connect to the target inside the workspace.
    TargetUnreachable,
    /// The agent's policy forbids this target port.
    PortNotAllowed,
    /// Too many streams or connections; retry later.
    Overloaded,
    /// This relay is draining; retry on another relay.
    Draining,
    /// A bug or unexpected failure on our side.
    Internal,
    /// The peer speaks an incompatible protocol version.
    UnsupportedVersion,
    /// This user has used up its share of a relay (streams open at once); slow down.
    /// Not retryable elsewhere: the share is the same on every relay.
    RateLimited,
    /// A code this build does not know.
    Other(u16),
}

impl ErrorCode {
    /// The code's number on the wire.
    pub fn to_u16(self) -> u16 {
        match self {
            ErrorCode::Protocol => 1,
            ErrorCode::Unauthorized => 2,
            ErrorCode::TokenExpired => 3,
            ErrorCode::WrongTokenKind => 4,
            ErrorCode::UnknownWorkspace => 5,
            ErrorCode::AgentNotConnected => 6,
            ErrorCode::TargetUnreachable => 7,
            ErrorCode::PortNotAllowed => 8,
            ErrorCode::Overloaded => 9,
            ErrorCode::Draining => 10,
            ErrorCode::Internal => 11,
            ErrorCode::UnsupportedVersion => 12,
            ErrorCode::RateLimited => 13,
            ErrorCode::Other(n) => n,
        }
    }

    /// Decodes a wire number; never fails.
    pub fn from_u16(n: u16) -> Self {
        match n {
            1 => ErrorCode::Protocol,
            2 => ErrorCode::Unauthorized,
            3 => ErrorCode::TokenExpired,
            4 => ErrorCode::WrongTokenKind,
            5 => ErrorCode::UnknownWorkspace,
            6 => ErrorCode::AgentNotConnected,
            7 => ErrorCode::TargetUnreachable,
            8 => ErrorCode::PortNotAllowed,
            9 => ErrorCode::Overloaded,
            10 => ErrorCode::Draining,
            11 => ErrorCode::Internal,
            12 => ErrorCode::UnsupportedVersion,
            13 => ErrorCode::RateLimited,
            n => ErrorCode::Other(n),
        }
    }

    /// A stable snake_case name, used in HTTP API errors and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Protocol => "protocol_error",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::TokenExpired => "token_expired",
            ErrorCode::WrongTokenKind => "wrong_token_kind",
            ErrorCode::UnknownWorkspace => "unknown_workspace",
            ErrorCode::AgentNotConnected => "agent_not_connected",
            ErrorCode::TargetUnreachable => "target_unreachable",
            ErrorCode::PortNotAllowed => "port_not_allowed",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::Draining => "draining",
            ErrorCode::Internal => "internal",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Other(_) => "other",
        }
    }

    /// Whether the same request may succeed if retried (possibly elsewhere).
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::Overloaded | ErrorCode::Draining | ErrorCode::AgentNotConnected
        )
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ErrorCode::Other(n) => write!(f, "error code {n}"),
            code => f.write_str(code.as_str()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_known_code_round_trips_through_its_number() {
        for n in 0..=64u16 {
            assert_eq!(ErrorCode::from_u16(n).to_u16(), n);
        }
    }
}
