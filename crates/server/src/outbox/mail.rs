//! E-mail over SMTP (lettre, rustls with ring): the server's SMTP settings, the
//! transport, and the message an event becomes.

use super::queue::EventRow;
use anyhow::{Context, bail};
use lettre::message::header::ContentType;
use lettre::message::{Attachment, Mailbox, MultiPart, SinglePart};
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, CertificateStore, Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Tokio1Executor};
use std::path::PathBuf;
use std::time::Duration;

/// How the SMTP connection is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Security {
    /// Plain connection upgraded with STARTTLS, which is required (default port 587).
    Starttls,
    /// TLS from the first byte, "SMTPS" (default port 465).
    Tls,
    /// No TLS: only to a server on loopback (default port 25).
    None,
}

impl std::str::FromStr for Security {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "starttls" => Ok(Security::Starttls),
            "tls" => Ok(Security::Tls),
            "none" => Ok(Security::None),
            _ => Err(format!("{s:?} is not starttls, tls or none")),
        }
    }
}

impl Security {
    pub fn as_str(self) -> &'static str {
        match self {
            Security::Starttls => "starttls",
            Security::Tls => "tls",
            Security::None => "none",
        }
    }
    pub fn default_port(self) -> u16 {
        match self {
            Security::Starttls => 587,
            Security::Tls => 465,
            Security::None => 25,
        }
    }
}

/// The server's SMTP settings (`--smtp-*`).
#[derive(Debug, Clone)]
pub struct SmtpConfig {
    pub host: String,
    pub port: u16,
    pub security: Security,
    pub username: Option<String>,
    /// The password's file (first line); read when the server starts.
    pub password_file: Option<PathBuf>,
    /// The sender, `Name <address>` or `address`.
    pub from: String,
    /// PEM certificate(s) of a private CA that signed the SMTP server's certificate
    /// (instead of the system's roots).
    pub ca_file: Option<PathBuf>,
}

impl SmtpConfig {
    /// Checks what can be checked without reading files.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.host.is_empty() || self.host.len() > 253 {
            bail!("smtp_host must be a host name or address");
        }
        self.from
            .parse::<Mailbox>()
            .map_err(|e| anyhow::anyhow!("smtp_from {:?} is not a mailbox: {e}", self.from))?;
        if self.security == Security::None && !is_loopback(&self.host) {
            bail!(
                "smtp_security none (no TLS) is allowed only to a server on loopback \
                 (127.0.0.0/8, ::1, localhost); use starttls or tls"
            );
        }
        if self.username.is_some() != self.password_file.is_some() {
            bail!("smtp_username and smtp_password_file go together");
        }
        Ok(())
    }
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Why a mail was not accepted.
#[derive(Debug)]
pub struct MailError {
    /// The server refused for good (5xx): retrying cannot help.
    pub permanent: bool,
    pub message: String,
}

/// Sends e-mails.
#[derive(Clone)]
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    /// `host:port (security)`, for the start-up banner.
    pub describe: String,
}

impl std::fmt::Debug for Mailer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Mailer({})", self.describe)
    }
}

/// An SMTP conversation may take this long in all.
pub const TIMEOUT: Duration = Duration::from_secs(30);

impl Mailer {
    /// Builds the transport: reads the password and CA files.
    pub fn new(cfg: &SmtpConfig) -> anyhow::Result<Mailer> {
        cfg.check()?;
        let from: Mailbox = cfg
            .from
            .parse()
            .map_err(|e| anyhow::anyhow!("smtp_from: {e}"))?;
        let host = cfg.host.trim_start_matches('[').trim_end_matches(']');
        let tls = || -> anyhow::Result<TlsParameters> {
            let mut b = TlsParameters::builder(host.to_string());
            if let Some(ca) = &cfg.ca_file {
                let pem = std::fs::read(ca).with_context(|| format!("reading {}", ca.display()))?;
                let cert = Certificate::from_pem(&pem)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", ca.display()))?;
                b = b
                    .certificate_store(CertificateStore::None)
                    .add_root_certificate(cert);
            }
            b.build_rustls()
                .map_err(|e| anyhow::anyhow!("SMTP TLS settings: {e}"))
        };
        let security = match cfg.security {
            Security::Starttls => Tls::Required(tls()?),
            Security::Tls => Tls::Wrapper(tls()?),
            Security::None => Tls::None,
        };
        let mut b = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host)
            .port(cfg.port)
            .tls(security)
            .timeout(Some(TIMEOUT));
        if let (Some(user), Some(file)) = (&cfg.username, &cfg.password_file) {
            let text = std::fs::read_to_string(file)
                .with_context(|| format!("reading the SMTP password {}", file.display()))?;
            let password = text.lines().next().unwrap_or("").to_string();
            if password.is_empty() {
                bail!("{} holds no password", file.display());
            }
            b = b.credentials(Credentials::new(user.clone(), password));
        }
        Ok(Mailer {
            transport: b.build(),
            from,
            describe: format!("{}:{} ({})", cfg.host, cfg.port, cfg.security.as_str()),
        })
    }

    /// Sends one event to one address.
    pub async fn send(&self, to: &str, ev: &EventRow, delivery_id: &str) -> Result<(), MailError> {
        let msg = build(&self.from, to, ev, delivery_id).map_err(|message| MailError {
            permanent: true,
            message,
        })?;
        match self.transport.send(msg).await {
            Ok(_) => Ok(()),
            Err(e) => Err(MailError {
                permanent: e.is_permanent(),
                message: describe(&e),
            }),
        }
    }
}

fn describe(e: &lettre::transport::smtp::Error) -> String {
    let mut s = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(c) = source {
        s.push_str(": ");
        s.push_str(&c.to_string());
        source = c.source();
    }
    s
}

/// The e-mail of an event: plain text, the attachment if any, and a Message-ID
/// that stays the same when the delivery is retried.
pub fn build(
    from: &Mailbox,
    to: &str,
    ev: &EventRow,
    delivery_id: &str,
) -> Result<lettre::Message, String> {
    let to: Mailbox = to
        .parse()
        .map_err(|_| format!("{to:?} is not an e-mail address"))?;
    let domain = from.email.domain().to_string();
    let b = lettre::Message::builder()
        .from(from.clone())
        .to(to)
        .subject(ev.subject.clone())
        .message_id(Some(format!("<{delivery_id}.{}@{domain}>", ev.id)))
        .date(
            std::time::UNIX_EPOCH + Duration::from_secs(u64::try_from(ev.created_at).unwrap_or(0)),
        );
    let text = SinglePart::builder()
        .header(ContentType::TEXT_PLAIN)
        .body(ev.text.clone());
    let r = match &ev.attachment {
        None => b.singlepart(text),
        Some((name, kind, bytes)) => {
            let kind = ContentType::parse(kind).unwrap_or(ContentType::TEXT_PLAIN);
            b.multipart(
                MultiPart::mixed()
                    .singlepart(text)
                    .singlepart(Attachment::new(name.clone()).body(bytes.clone(), kind)),
            )
        }
    };
    r.map_err(|e| format!("the e-mail could not be built: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(host: &str, security: Security) -> SmtpConfig {
        SmtpConfig {
            host: host.into(),
            port: security.default_port(),
            security,
            username: None,
            password_file: None,
            from: "Drawbridge <noreply@example.com>".into(),
            ca_file: None,
        }
    }

    #[test]
    fn mail_without_tls_goes_only_to_loopback() {
        assert!(cfg("127.0.0.1", Security::None).check().is_ok());
        assert!(cfg("localhost", Security::None).check().is_ok());
        assert!(cfg("[::1]", Security::None).check().is_ok());
        assert!(cfg("smtp.example.com", Security::None).check().is_err());
        assert!(cfg("10.0.0.5", Security::None).check().is_err());
        assert!(cfg("smtp.example.com", Security::Starttls).check().is_ok());
        let mut c = cfg("smtp.example.com", Security::Tls);
        c.from = "not a mailbox".into();
        assert!(c.check().is_err());
        c.from = "a@b.c".into();
        c.username = Some("u".into());
        assert!(c.check().is_err(), "a user name needs a password file");
    }

    #[test]
    fn an_event_becomes_a_mail_with_its_attachment() {
        let ev = EventRow {
            id: "msg_1".into(),
            account_id: "a".into(),
            kind: "activity_report".into(),
            subject: "Activity report — May".into(),
            text: "Hello".into(),
            data: "{}".into(),
            attachment: Some((
                "report.csv".into(),
                "text/csv".into(),
                b"a,b\n1,2\n".to_vec(),
            )),
            created_at: 1_700_000_000,
        };
        let from: Mailbox = "Drawbridge <noreply@example.com>".parse().unwrap();
        let m = build(&from, "ops@example.com", &ev, "d1").unwrap();
        let raw = String::from_utf8(m.formatted()).unwrap();
        assert!(raw.contains("Message-ID: <d1.msg_1@example.com>"), "{raw}");
        assert!(raw.contains("report.csv"));
        assert!(raw.contains("text/csv"));
        assert!(build(&from, "no address", &ev, "d1").is_err());
    }
}
