//! The first-run setup page behind the one-time link the server prints: a
//! plain HTML form (no script) that creates the first account and its admin.
//! The full web portal builds on the same API later.

use crate::auth::Source;
use crate::state::AppState;
use axum::Form;
use axum::Router;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use drawbridge_proto::{Name, Username};
use serde::Deserialize;

pub fn router() -> Router<AppState> {
    Router::new().route("/setup", axum::routing::get(form).post(submit))
}

fn escape(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '<' => "&lt;".into(),
            '>' => "&gt;".into(),
            '&' => "&amp;".into(),
            '"' => "&quot;".into(),
            '\'' => "&#39;".into(),
            c => c.to_string(),
        })
        .collect()
}

fn page(title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{t} — Drawbridge</title></head><body><main><h1>{t}</h1>{body}</main></body></html>",
        t = escape(title)
    );
    (
        [
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; form-action 'self'; frame-ancestors 'none'",
            ),
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
        ],
        Html(html),
    )
        .into_response()
}

#[derive(Deserialize)]
struct TokenQuery {
    #[serde(default)]
    token: String,
}

async fn form(Query(q): Query<TokenQuery>) -> Response {
    form_page(&q.token, "", "", None)
}

fn form_page(token: &str, account: &str, user: &str, error: Option<&str>) -> Response {
    let err = error
        .map(|e| format!("<p role=\"alert\"><strong>{}</strong></p>", escape(e)))
        .unwrap_or_default();
    page(
        "Set up Drawbridge",
        &format!(
            "<p>Create the first account and its administrator. This link works once.</p>{err}
<form method=\"post\" action=\"/setup\">
<input type=\"hidden\" name=\"token\" value=\"{token}\">
<p><label>Account name<br><input name=\"account\" required maxlength=\"64\" value=\"{account}\"></label></p>
<p><label>Admin user name<br><input name=\"admin_username\" required maxlength=\"64\" autocomplete=\"username\" value=\"{user}\"></label></p>
<p><label>Admin password (at least 10 characters, mixing 3 of: lower case, upper case, digits, other)<br><input name=\"admin_password\" type=\"password\" required autocomplete=\"new-password\"></label></p>
<p><button type=\"submit\">Create account</button></p>
</form>",
            token = escape(token),
            account = escape(account),
            user = escape(user),
        ),
    )
}

#[derive(Deserialize)]
struct SetupForm {
    token: String,
    account: String,
    admin_username: String,
    admin_password: String,
}

async fn submit(
    State(state): State<AppState>,
    Source(source): Source,
    Form(f): Form<SetupForm>,
) -> Response {
    let again = |e: &str| form_page(&f.token, &f.account, &f.admin_username, Some(e));
    let account = match Name::try_from(f.account.clone()) {
        Ok(a) => a,
        Err(e) => return again(&format!("Account name: {e}")),
    };
    let user = match Username::try_from(f.admin_username.clone()) {
        Ok(u) => u,
        Err(e) => return again(&format!("User name: {e}")),
    };
    match crate::bootstrap::setup_with_token(
        &state,
        &f.token,
        &account,
        &user,
        &f.admin_password,
        &source,
    )
    .await
    {
        Ok(r) => page(
            "Drawbridge is set up",
            &format!(
                "<p>Account <strong>{}</strong> with administrator <strong>{}</strong> was created.</p><p>Log in with the <code>drawbridge</code> command:</p><pre>drawbridge login --server {} --account {} --user {}</pre>",
                escape(r.account.name.as_str()),
                escape(r.admin.username.as_str()),
                escape(&state.public_url),
                escape(r.account.name.as_str()),
                escape(r.admin.username.as_str()),
            ),
        ),
        Err(e) => again(&e.message),
    }
}
