//! `ferry admin ...`: operator commands, authorized by the admin token the control
//! plane writes to its data directory.

use std::path::PathBuf;

use anyhow::{Context, Result};
use ferry_proto::api::{
    CreateUserRequest, RotateKeysRequest, RotateKeysResponse, UserInfo, UsersResponse,
};
use ferry_transport::ControlClient;

use crate::cmd_login::read_password;
use crate::cmd_servers::{read_ca, secret_arg};

#[derive(Debug, clap::Args)]
pub struct AdminArgs {
    #[command(subcommand)]
    pub command: AdminCommand,
    /// Control plane URL
    #[arg(long = "control", env = "FERRY_CONTROL_URL", global = true)]
    pub control_url: Option<String>,
    /// CA certificate (PEM)
    #[arg(long = "ca", env = "FERRY_CA", global = true)]
    pub ca_file: Option<PathBuf>,
    /// Admin token (or a file holding it with @PATH)
    #[arg(long, env = "FERRY_ADMIN_TOKEN", hide_env_values = true, global = true)]
    pub admin_token: Option<String>,
}

#[derive(Debug, clap::Subcommand)]
pub enum AdminCommand {
    /// Manage users
    #[command(subcommand)]
    User(UserCommand),
    /// Manage token signing keys
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Revoke any token by its id (jti); relays refuse it within seconds
    Revoke {
        /// Token id
        id: String,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum UserCommand {
    /// Create a user (asks for a password unless --no-password)
    Create {
        name: String,
        /// Read the password from standard input (one line)
        #[arg(long)]
        password_stdin: bool,
        /// No password: the user can only use tokens an admin mints
        #[arg(long, conflicts_with = "password_stdin")]
        no_password: bool,
    },
    /// List users
    List,
}

#[derive(Debug, clap::Subcommand)]
pub enum KeysCommand {
    /// Start signing with a new key; old keys verify until their tokens expire
    Rotate {
        /// Stop trusting the old keys now (a leaked key): EVERY existing token stops
        /// working, relay and agent tokens included; prints a new admin token
        #[arg(long)]
        drop_old: bool,
    },
}

pub async fn run(args: AdminArgs) -> Result<()> {
    let hint = "pass --control, --ca and --admin-token (or FERRY_CONTROL_URL, FERRY_CA, FERRY_ADMIN_TOKEN)";
    let url = args
        .control_url
        .context(format!("no control plane URL: {hint}"))?;
    let ca = args.ca_file.context(format!("no CA certificate: {hint}"))?;
    let admin = secret_arg(
        &args
            .admin_token
            .context(format!("no admin token: {hint}"))?,
    )?;
    let control = ControlClient::new(&url, &read_ca(&ca)?)?;
    let token = Some(admin.as_str());
    match args.command {
        AdminCommand::User(UserCommand::Create {
            name,
            password_stdin,
            no_password,
        }) => {
            let password = if no_password {
                None
            } else {
                Some(read_password(
                    &format!("password for {name}: "),
                    password_stdin,
                )?)
            };
            let user: UserInfo = control
                .post(
                    "/api/v1/users",
                    token,
                    &CreateUserRequest { name, password },
                )
                .await
                .map_err(crate::client::api_error)?;
            println!("created user {}", user.name);
        }
        AdminCommand::User(UserCommand::List) => {
            let users: UsersResponse = control
                .get("/api/v1/users", token)
                .await
                .map_err(crate::client::api_error)?;
            for u in users.users {
                println!(
                    "{}{}",
                    u.name,
                    if u.has_password {
                        ""
                    } else {
                        "  (no password)"
                    }
                );
            }
        }
        AdminCommand::Keys(KeysCommand::Rotate { drop_old }) => {
            let resp: RotateKeysResponse = control
                .post(
                    "/api/v1/keys/rotate",
                    token,
                    &RotateKeysRequest { drop_old },
                )
                .await
                .map_err(crate::client::api_error)?;
            if let Some(admin) = &resp.admin_token {
                eprintln!("old keys dropped: every earlier token is invalid. New admin token:");
                println!("{admin}");
            }
            println!("signing with key {}", resp.kid);
            println!(
                "published keys: {}",
                resp.keys
                    .iter()
                    .map(|k| k.kid.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        AdminCommand::Revoke { id } => {
            control
                .delete(&format!("/api/v1/tokens/{id}"), token)
                .await
                .map_err(crate::client::api_error)?;
            println!("revoked {id}");
        }
    }
    Ok(())
}
