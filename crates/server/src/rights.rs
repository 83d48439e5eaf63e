//! What a user may do with a device: the strongest of their groups' grants on
//! the pools holding it (admins: everything). The one place this is computed.

use crate::error::AppResult;
use drawbridge_proto::{GrantLevel, Role, Target};
use sqlx::{AnyConnection, Row};

/// A user's access to one device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Access {
    None,
    Monitor,
    /// The union of the restricted grants' targets.
    Restricted(Vec<Target>),
    Full,
}

impl Access {
    /// May the user have a tunnel to this device at all?
    pub fn can_tunnel(&self) -> bool {
        matches!(self, Access::Restricted(_) | Access::Full)
    }
    pub fn can_see(&self) -> bool {
        !matches!(self, Access::None)
    }

    /// Is `t` allowed by this access on a device with `firewall`?
    pub fn allows(&self, firewall: &[Target], t: &Target) -> bool {
        let in_firewall = firewall.iter().any(|f| f.covers(t));
        match self {
            Access::Full => in_firewall,
            Access::Restricted(ts) => in_firewall && ts.iter().any(|g| g.covers(t)),
            _ => false,
        }
    }

    /// The targets this access releases by default on a device.
    pub fn default_targets(&self, firewall: &[Target]) -> Vec<Target> {
        match self {
            Access::Full => firewall.to_vec(),
            Access::Restricted(ts) => ts
                .iter()
                .filter(|t| firewall.iter().any(|f| f.covers(t)))
                .cloned()
                .collect(),
            _ => Vec::new(),
        }
    }
}

/// The access of `user_id` (with `role`) to `device_id`, both in `account_id`.
pub async fn access(
    conn: &mut AnyConnection,
    account_id: &str,
    user_id: &str,
    role: Role,
    device_id: &str,
) -> AppResult<Access> {
    match role {
        Role::Admin => return Ok(Access::Full),
        Role::Auditor => return Ok(Access::None),
        _ => {}
    }
    let rows = sqlx::query(
        "SELECT g.level, g.targets FROM grants g
         JOIN group_members m ON m.group_id = g.group_id
         JOIN pool_devices p ON p.pool_id = g.pool_id
         WHERE g.account_id = $1 AND m.user_id = $2 AND p.device_id = $3",
    )
    .bind(account_id)
    .bind(user_id)
    .bind(device_id)
    .fetch_all(conn)
    .await?;
    let mut best = Access::None;
    for r in rows {
        let level: GrantLevel = r
            .try_get::<String, _>(0)?
            .parse()
            .map_err(|_| crate::error::AppError::internal(anyhow::anyhow!("grant level")))?;
        let targets: Vec<Target> = serde_json::from_str(&r.try_get::<String, _>(1)?)
            .map_err(crate::error::AppError::internal)?;
        best = match (best, level) {
            (_, GrantLevel::Full) | (Access::Full, _) => Access::Full,
            (Access::Restricted(mut a), GrantLevel::Restricted) => {
                a.extend(targets);
                Access::Restricted(a)
            }
            (_, GrantLevel::Restricted) => Access::Restricted(targets),
            (Access::Restricted(a), GrantLevel::Monitor) => Access::Restricted(a),
            (_, GrantLevel::Monitor) => Access::Monitor,
        };
    }
    Ok(best)
}

/// Devices of the account the user can see at all (admins and auditors: every one).
pub async fn visible_devices(
    conn: &mut AnyConnection,
    account_id: &str,
    user_id: &str,
    role: Role,
) -> AppResult<Option<Vec<String>>> {
    if matches!(role, Role::Admin | Role::Auditor) {
        return Ok(None);
    }
    let ids: Vec<String> = sqlx::query_scalar(
        "SELECT DISTINCT p.device_id FROM grants g
         JOIN group_members m ON m.group_id = g.group_id
         JOIN pool_devices p ON p.pool_id = g.pool_id
         WHERE g.account_id = $1 AND m.user_id = $2",
    )
    .bind(account_id)
    .bind(user_id)
    .fetch_all(conn)
    .await?;
    Ok(Some(ids))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Target {
        s.parse().unwrap()
    }

    #[test]
    fn restricted_access_needs_both_firewall_and_grant() {
        let fw = vec![t("tcp:192.168.1.0/24"), t("icmp:192.168.1.0/24")];
        let r = Access::Restricted(vec![t("tcp:192.168.1.10:502")]);
        assert!(r.allows(&fw, &t("tcp:192.168.1.10:502")));
        assert!(!r.allows(&fw, &t("tcp:192.168.1.10:80")));
        assert!(!r.allows(&fw, &t("icmp:192.168.1.10")));
        assert!(Access::Full.allows(&fw, &t("icmp:192.168.1.10")));
        assert!(
            !Access::Full.allows(&fw, &t("tcp:10.0.0.1:22")),
            "firewall bounds even full access"
        );
        assert!(!Access::Monitor.allows(&fw, &t("tcp:192.168.1.10:502")));
        assert_eq!(r.default_targets(&fw), vec![t("tcp:192.168.1.10:502")]);
    }
}
