//! The account's single sign-on settings (admins): the OpenID provider (the
//! client secret is write-only), "Test discovery", the rules mapping the
//! provider's groups to groups and roles, and the links of users to provider
//! subjects. Everything goes through the server's `/account/sso` API.

use crate::apiclient::enc;
use crate::web::{Flash, Layout, Posted, Viewer, after, render};
use crate::{PREFIX, Portal};
use askama::Template;
use axum::extract::{Path, State};
use axum::http::{Method, StatusCode};
use axum::response::Response;
use drawbridge_proto::api::{Group, User};
use drawbridge_proto::sso::{
    CALLBACK_PATH, SsoIdentity, SsoMode, SsoRule, SsoSettings, SsoTestResult,
};
use drawbridge_proto::{Action, ApiError, ErrorCode, Role};
use serde_json::{Value, json};

/// One row of the rules table.
struct RuleRow {
    id: String,
    claim_value: String,
    group: String,
    role: String,
    priority: u16,
}

/// One row of the linked identities table.
struct IdentityRow {
    id: String,
    user: String,
    subject: String,
    email: String,
    last_login: String,
}

/// The form's values (the stored settings, or the defaults).
struct FormValues {
    issuer: String,
    client_id: String,
    secret_set: bool,
    cli_client_id: String,
    label: String,
    scopes: String,
    groups_claim: String,
    mode: &'static str,
    jit: bool,
    jit_role: &'static str,
    amr_mfa: bool,
    mfa_amr_values: String,
    break_glass: String,
}

#[derive(Template)]
#[template(path = "sso_settings.html")]
struct SsoPage {
    l: Layout,
    configured: bool,
    f: FormValues,
    redirect_uri: String,
    admins: Vec<(String, String)>,
    users: Vec<(String, String)>,
    groups: Vec<(String, String)>,
    roles: Vec<&'static str>,
    rules: Vec<RuleRow>,
    identities: Vec<IdentityRow>,
    test: Option<SsoTestResult>,
    test_error: Option<String>,
}

fn form_values(s: Option<&SsoSettings>) -> FormValues {
    match s {
        Some(s) => FormValues {
            issuer: s.issuer.clone(),
            client_id: s.client_id.clone(),
            secret_set: s.client_secret_set,
            cli_client_id: s.cli_client_id.clone().unwrap_or_default(),
            label: s.label.clone(),
            scopes: s.scopes.join(" "),
            groups_claim: s.groups_claim.clone(),
            mode: s.mode.as_str(),
            jit: s.jit,
            jit_role: s.jit_role.as_str(),
            amr_mfa: s.amr_mfa,
            mfa_amr_values: s.mfa_amr_values.join(" "),
            break_glass: s.break_glass_user_id.clone().unwrap_or_default(),
        },
        None => FormValues {
            issuer: String::new(),
            client_id: String::new(),
            secret_set: false,
            cli_client_id: String::new(),
            label: String::new(),
            scopes: "email profile".into(),
            groups_claim: "groups".into(),
            mode: SsoMode::Optional.as_str(),
            jit: false,
            jit_role: Role::User.as_str(),
            amr_mfa: false,
            mfa_amr_values: drawbridge_proto::sso::DEFAULT_MFA_AMR.join(" "),
            break_glass: String::new(),
        },
    }
}

async fn show(v: Viewer, test: Option<Result<SsoTestResult, ApiError>>) -> Response {
    if !v.can(Action::ManageUsers) {
        return v.fail(&ApiError::new(
            ErrorCode::Forbidden,
            "single sign-on settings are for admins",
        ));
    }
    let settings = match v.api.get::<SsoSettings>("/api/v1/account/sso").await {
        Ok(s) => Some(s),
        Err(e) if e.code == ErrorCode::NotFound => None,
        Err(e) => return v.fail(&e),
    };
    let (users, groups, rules, identities) = match futures_join(&v).await {
        Ok(x) => x,
        Err(e) => return v.fail(&e),
    };
    let user_name = |id: &str| {
        users
            .iter()
            .find(|u| u.id == id)
            .map(|u| u.username.to_string())
            .unwrap_or_else(|| super::short(id))
    };
    let group_name = |id: &str| {
        groups
            .iter()
            .find(|g| g.id == id)
            .map(|g| g.name.to_string())
            .unwrap_or_else(|| super::short(id))
    };
    let (test, test_error) = match test {
        Some(Ok(t)) => (Some(t), None),
        Some(Err(e)) => (None, Some(e.message)),
        None => (None, None),
    };
    let page = SsoPage {
        l: v.layout("Single sign-on"),
        configured: settings.is_some(),
        redirect_uri: settings
            .as_ref()
            .map(|s| s.redirect_uri.clone())
            .unwrap_or_else(|| format!("{}{CALLBACK_PATH}", v.base_url())),
        f: form_values(settings.as_ref()),
        admins: users
            .iter()
            .filter(|u| u.role == Role::Admin && !u.disabled)
            .map(|u| (u.id.clone(), u.username.to_string()))
            .collect(),
        users: users
            .iter()
            .map(|u| (u.id.clone(), u.username.to_string()))
            .collect(),
        groups: groups
            .iter()
            .map(|g| (g.id.clone(), g.name.to_string()))
            .collect(),
        roles: Role::ALL.iter().map(|r| r.as_str()).collect(),
        rules: rules
            .iter()
            .map(|r| RuleRow {
                id: r.id.clone(),
                claim_value: r.claim_value.clone(),
                group: r.group_id.as_deref().map(group_name).unwrap_or_default(),
                role: r.role.map(|r| r.as_str().to_string()).unwrap_or_default(),
                priority: r.priority,
            })
            .collect(),
        identities: identities
            .iter()
            .map(|i| IdentityRow {
                id: i.id.clone(),
                user: user_name(&i.user_id),
                subject: i.subject.clone(),
                email: i.email.clone().unwrap_or_default(),
                last_login: super::when_opt(&i.last_login_at),
            })
            .collect(),
        test,
        test_error,
    };
    render(StatusCode::OK, &page, v.flash.is_some())
}

type Lists = (Vec<User>, Vec<Group>, Vec<SsoRule>, Vec<SsoIdentity>);

async fn futures_join(v: &Viewer) -> Result<Lists, ApiError> {
    let (users, groups, rules, identities) = tokio::join!(
        v.api.get::<Vec<User>>("/api/v1/users"),
        v.api.get::<Vec<Group>>("/api/v1/groups"),
        v.api.get::<Vec<SsoRule>>("/api/v1/account/sso/rules"),
        v.api
            .get::<Vec<SsoIdentity>>("/api/v1/account/sso/identities"),
    );
    Ok((users?, groups?, rules?, identities?))
}

/// `GET /portal/account/sso`.
pub async fn page(v: Viewer) -> Response {
    show(v, None).await
}

fn back() -> String {
    format!("{PREFIX}/account/sso")
}

/// Space- or comma-separated words.
fn words(s: &str) -> Vec<String> {
    s.split([' ', ',', '\n', '\t', '\r'])
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect()
}

/// The settings form as the API's request (blank optional fields left out;
/// a blank secret keeps the stored one).
fn settings_body(p: &Posted) -> Value {
    let f = &p.form;
    let mut b = json!({
        "issuer": f.get("issuer").trim(),
        "client_id": f.get("client_id").trim(),
        "scopes": words(f.get("scopes")),
        "groups_claim": f.opt("groups_claim").unwrap_or("groups"),
        "mode": f.get("mode"),
        "jit": f.checked("jit"),
        "jit_role": f.opt("jit_role").unwrap_or("user"),
        "amr_mfa": f.checked("amr_mfa"),
        "mfa_amr_values": words(f.get("mfa_amr_values")),
    });
    let optional = [
        ("client_secret", f.opt("client_secret")),
        ("cli_client_id", f.opt("cli_client_id")),
        ("label", f.opt("label")),
        ("break_glass_user_id", f.opt("break_glass_user_id")),
    ];
    for (k, v) in optional {
        if let Some(v) = v {
            b[k] = v.into();
        }
    }
    b
}

/// `POST /portal/account/sso`: save the provider.
pub async fn save(p: Posted) -> Response {
    let r = p
        .api
        .call::<SsoSettings>(Method::PUT, "/api/v1/account/sso", Some(settings_body(&p)))
        .await;
    after(
        r,
        &p.headers,
        &back(),
        "The single sign-on settings were saved.",
    )
}

/// `POST /portal/account/sso/delete`: remove the provider.
pub async fn delete(p: Posted) -> Response {
    let r = p.api.send(Method::DELETE, "/api/v1/account/sso").await;
    after(
        r,
        &p.headers,
        &back(),
        "The provider was removed; single sign-on is off.",
    )
}

/// `POST /portal/account/sso/test`: the provider's discovery document, now.
pub async fn test(State(portal): State<Portal>, p: Posted) -> Response {
    let v = match p.viewer(&portal).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let r = p
        .api
        .call::<SsoTestResult>(Method::POST, "/api/v1/account/sso/test", None)
        .await;
    show(v, Some(r)).await
}

/// `POST /portal/account/sso/rules`: add a rule.
pub async fn add_rule(p: Posted) -> Response {
    let f = &p.form;
    let priority = match f.opt("priority").map(str::parse::<u16>) {
        None => 100,
        Some(Ok(n)) => n,
        Some(Err(_)) => {
            return Flash::error("priority: enter a whole number from 0 to 10000")
                .redirect(&back());
        }
    };
    let mut b = json!({ "claim_value": f.get("claim_value").trim(), "priority": priority });
    if let Some(g) = f.opt("group_id") {
        b["group_id"] = g.into();
    }
    if let Some(r) = f.opt("role") {
        b["role"] = r.into();
    }
    let r = p.api.post::<SsoRule>("/api/v1/account/sso/rules", &b).await;
    after(
        r,
        &p.headers,
        &back(),
        "The rule was added; it applies at each user's next sign-in.",
    )
}

/// `POST /portal/account/sso/rules/{id}/delete`.
pub async fn delete_rule(Path(id): Path<String>, p: Posted) -> Response {
    let r = p
        .api
        .send(
            Method::DELETE,
            &format!("/api/v1/account/sso/rules/{}", enc(&id)),
        )
        .await;
    after(
        r,
        &p.headers,
        &back(),
        "The rule was removed; what it gave is taken away at each user's next sign-in.",
    )
}

/// `POST /portal/account/sso/identities`: link a user to a provider subject.
pub async fn link(p: Posted) -> Response {
    let f = &p.form;
    let b = json!({ "user_id": f.get("user_id"), "subject": f.get("subject").trim() });
    let r = p
        .api
        .post::<SsoIdentity>("/api/v1/account/sso/identities", &b)
        .await;
    after(r, &p.headers, &back(), "The user was linked.")
}

/// `POST /portal/account/sso/identities/{id}/delete`.
pub async fn unlink(Path(id): Path<String>, p: Posted) -> Response {
    let r = p
        .api
        .send(
            Method::DELETE,
            &format!("/api/v1/account/sso/identities/{}", enc(&id)),
        )
        .await;
    after(r, &p.headers, &back(), "The link was removed.")
}
