//! The command line: the clap types ([`args`]), what every command shares
//! ([`context`]: connection, name resolution, output) and one module per
//! resource, named like the server's `api/` and the portal's `pages/`
//! (the data services' and notifications' clap types are in [`data_args`],
//! the edge updates' in [`rollout_args`]).

mod account;
mod alarms;
pub mod args;
mod audit;
pub(crate) mod context;
mod data;
pub mod data_args;
mod devices;
mod grants;
mod groups;
mod kpi;
mod login;
mod notify;
mod pools;
pub mod rollout_args;
mod rollouts;
mod sessions;
mod sync;
mod tags;
mod tokens;
mod users;
mod webhooks;

use crate::Result;
pub use account::apply_setting;
pub use args::*;
use context::connect;
pub use data_args::*;
pub use rollout_args::*;

/// Runs one command line.
pub async fn run(cli: Cli) -> Result<()> {
    let g = cli.global;
    match cli.command {
        Command::Login(args) => login::login(&g, args).await,
        Command::Logout => login::logout(&g).await,
        Command::Whoami => login::whoami(&connect(&g)?).await,
        Command::Devices | Command::Device(DeviceCmd::List) => {
            devices::devices(&connect(&g)?).await
        }
        Command::Device(cmd) => devices::device(&connect(&g)?, cmd).await,
        Command::Sessions { state } | Command::Session(SessionCmd::List { state }) => {
            sessions::sessions(&connect(&g)?, state).await
        }
        Command::Session(cmd) => sessions::session(&connect(&g)?, cmd).await,
        Command::Users | Command::User(UserCmd::List) => users::users(&connect(&g)?).await,
        Command::User(UserCmd::Email { user, email, clear }) => {
            notify::user_email(&connect(&g)?, &user, email, clear).await
        }
        Command::User(cmd) => users::user(&connect(&g)?, cmd).await,
        Command::Groups | Command::Group(GroupCmd::List) => groups::groups(&connect(&g)?).await,
        Command::Group(cmd) => groups::group(&connect(&g)?, cmd).await,
        Command::Pools | Command::Pool(PoolCmd::List) => pools::pools(&connect(&g)?).await,
        Command::Pool(cmd) => pools::pool(&connect(&g)?, cmd).await,
        Command::Grants | Command::Grant(GrantCmd::List) => grants::grants(&connect(&g)?).await,
        Command::Grant(cmd) => grants::grant(&connect(&g)?, cmd).await,
        Command::FleetKey(cmd) => devices::fleet_key(&connect(&g)?, cmd).await,
        Command::Token(cmd) => tokens::token(&connect(&g)?, cmd).await,
        Command::Password(args) => login::password(&connect(&g)?, args).await,
        Command::Totp(TotpCmd::Enable { code }) => login::totp_enable(&connect(&g)?, code).await,
        Command::Account(cmd) => account::account(&connect(&g)?, cmd).await,
        Command::Notifications => account::notifications(&connect(&g)?).await,
        Command::Tag(cmd) => tags::tag(&connect(&g)?, cmd).await,
        Command::Data(cmd) => data::data(&connect(&g)?, cmd).await,
        Command::Kpi(a) => kpi::kpi(&connect(&g)?, &a.device, a.watch).await,
        Command::Alarm(cmd) => alarms::alarm(&connect(&g)?, cmd).await,
        Command::Notify(cmd) => notify::notify(&connect(&g)?, cmd).await,
        Command::Webhook(cmd) => webhooks::webhook(&connect(&g)?, cmd).await,
        Command::Audit(cmd) => audit::audit(&connect(&g)?, cmd).await,
        Command::Release(ReleaseCmd::List) => rollouts::releases(&connect(&g)?).await,
        Command::Rollout(cmd) => rollouts::rollout(&connect(&g)?, cmd).await,
        Command::Connect(args) => crate::connect::run(&connect(&g)?, args).await,
        Command::Status => crate::connect::status(g.json),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }
}
