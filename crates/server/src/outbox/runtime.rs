//! This replica's notification settings at run time: the SMTP transport (if
//! configured), the webhook sender and its address rule, and when a failing
//! webhook is disabled. Held in the application state; set once at start (tests
//! set their own).

use super::mail::{Mailer, SmtpConfig};
use super::webhook::Sender;
use std::sync::{Arc, RwLock};

/// Days of failures after which a webhook is disabled, by default.
pub const DEFAULT_WEBHOOK_FAILURE_DAYS: u32 = 5;

/// The notification part of the server's configuration.
#[derive(Debug, Clone)]
pub struct NotifyConfig {
    /// None: no e-mail (deliveries wait for a replica that has SMTP, up to three days).
    pub smtp: Option<SmtpConfig>,
    /// Webhooks may go to loopback and private addresses (and http there).
    pub webhook_allow_private: bool,
    /// A webhook failing this many days in a row is disabled and the admins told.
    pub webhook_failure_days: u32,
}

impl Default for NotifyConfig {
    fn default() -> Self {
        NotifyConfig {
            smtp: None,
            webhook_allow_private: false,
            webhook_failure_days: DEFAULT_WEBHOOK_FAILURE_DAYS,
        }
    }
}

/// What the worker and the API use now.
#[derive(Debug, Clone)]
pub struct Active {
    pub mailer: Option<Mailer>,
    pub webhooks: Sender,
    pub allow_private: bool,
    pub failure_days: u32,
}

/// The replica's notification settings (shared by handlers and the worker).
#[derive(Debug)]
pub struct Notify {
    active: RwLock<Arc<Active>>,
    /// Names this replica's leases.
    pub owner: String,
}

impl Default for Notify {
    fn default() -> Self {
        Notify {
            active: RwLock::new(Arc::new(Active {
                mailer: None,
                webhooks: Sender::new(false).expect("the default webhook client builds"),
                allow_private: false,
                failure_days: DEFAULT_WEBHOOK_FAILURE_DAYS,
            })),
            owner: format!("replica-{}", uuid::Uuid::new_v4().simple()),
        }
    }
}

impl Notify {
    pub fn get(&self) -> Arc<Active> {
        self.active
            .read()
            .map(|a| a.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }

    /// Applies a configuration: reads the SMTP password and CA files.
    pub fn configure(&self, cfg: &NotifyConfig) -> anyhow::Result<()> {
        let mailer = cfg.smtp.as_ref().map(Mailer::new).transpose()?;
        let active = Active {
            mailer,
            webhooks: Sender::new(cfg.webhook_allow_private)?,
            allow_private: cfg.webhook_allow_private,
            failure_days: cfg.webhook_failure_days.max(1),
        };
        match self.active.write() {
            Ok(mut a) => *a = Arc::new(active),
            Err(e) => *e.into_inner() = Arc::new(active),
        }
        Ok(())
    }
}
