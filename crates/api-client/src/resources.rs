//! One method per call of the control API, grouped like the server's `api/`
//! (auth and me, tokens, account, users, groups/pools/grants, devices, sessions,
//! edge updates).

use crate::client::{Client, seg};
use crate::error::Result;
use drawbridge_proto::api::*;
use drawbridge_proto::update::{CreateRollout, Release, Rollout};
use reqwest::Method;

impl Client {
    // ------------------------------------------------------------ auth & me

    pub async fn login(&self, req: &LoginRequest) -> Result<LoginResponse> {
        self.post("/auth/login", req).await
    }
    pub async fn login_totp(&self, code: &str) -> Result<LoginResponse> {
        self.post("/auth/totp", &TotpCode { code: code.into() })
            .await
    }
    pub async fn logout(&self) -> Result<()> {
        self.empty(Method::POST, "/auth/logout", None).await
    }
    pub async fn me(&self) -> Result<WhoAmI> {
        self.get("/me").await
    }
    pub async fn change_password(&self, current: &str, new: &str) -> Result<LoginResponse> {
        let req = PasswordChangeRequest {
            current_password: current.into(),
            new_password: new.into(),
        };
        self.post("/me/password", &req).await
    }
    pub async fn totp_enroll(&self) -> Result<TotpEnrollResponse> {
        self.post_empty_body("/me/totp/enroll").await
    }
    pub async fn totp_confirm(&self, code: &str) -> Result<LoginResponse> {
        self.post("/me/totp/confirm", &TotpCode { code: code.into() })
            .await
    }

    // ------------------------------------------------------------ tokens

    pub async fn tokens(&self) -> Result<Vec<ApiToken>> {
        self.get("/tokens").await
    }
    pub async fn create_token(&self, req: &CreateApiToken) -> Result<CreatedApiToken> {
        self.post("/tokens", req).await
    }
    pub async fn revoke_token(&self, id: &str) -> Result<()> {
        self.delete(&format!("/tokens/{}", seg(id))).await
    }

    // ------------------------------------------------------------ account

    pub async fn account(&self) -> Result<Account> {
        self.get("/account").await
    }
    pub async fn update_account(&self, req: &UpdateAccount) -> Result<Account> {
        self.patch("/account", req).await
    }
    pub async fn notifications(&self) -> Result<Vec<Notification>> {
        self.get("/notifications").await
    }

    // ------------------------------------------------------------ users

    pub async fn users(&self) -> Result<Vec<User>> {
        self.get("/users").await
    }
    pub async fn user(&self, id: &str) -> Result<User> {
        self.get(&format!("/users/{}", seg(id))).await
    }
    pub async fn create_user(&self, req: &CreateUser) -> Result<User> {
        self.post("/users", req).await
    }
    pub async fn update_user(&self, id: &str, req: &UpdateUser) -> Result<User> {
        self.patch(&format!("/users/{}", seg(id)), req).await
    }

    // ------------------------------------------------------------ groups, pools, grants

    pub async fn groups(&self) -> Result<Vec<Group>> {
        self.get("/groups").await
    }
    pub async fn group(&self, id: &str) -> Result<Group> {
        self.get(&format!("/groups/{}", seg(id))).await
    }
    pub async fn create_group(&self, name: drawbridge_proto::Name) -> Result<Group> {
        self.post("/groups", &CreateNamed { name }).await
    }
    pub async fn delete_group(&self, id: &str) -> Result<()> {
        self.delete(&format!("/groups/{}", seg(id))).await
    }
    pub async fn add_member(&self, group: &str, user: &str) -> Result<()> {
        self.put(&format!("/groups/{}/members/{}", seg(group), seg(user)))
            .await
    }
    pub async fn remove_member(&self, group: &str, user: &str) -> Result<()> {
        self.delete(&format!("/groups/{}/members/{}", seg(group), seg(user)))
            .await
    }
    pub async fn pools(&self) -> Result<Vec<Pool>> {
        self.get("/pools").await
    }
    pub async fn pool(&self, id: &str) -> Result<Pool> {
        self.get(&format!("/pools/{}", seg(id))).await
    }
    pub async fn create_pool(&self, name: drawbridge_proto::Name) -> Result<Pool> {
        self.post("/pools", &CreateNamed { name }).await
    }
    pub async fn delete_pool(&self, id: &str) -> Result<()> {
        self.delete(&format!("/pools/{}", seg(id))).await
    }
    pub async fn add_pool_device(&self, pool: &str, device: &str) -> Result<()> {
        self.put(&format!("/pools/{}/devices/{}", seg(pool), seg(device)))
            .await
    }
    pub async fn remove_pool_device(&self, pool: &str, device: &str) -> Result<()> {
        self.delete(&format!("/pools/{}/devices/{}", seg(pool), seg(device)))
            .await
    }
    pub async fn grants(&self) -> Result<Vec<Grant>> {
        self.get("/grants").await
    }
    pub async fn create_grant(&self, req: &CreateGrant) -> Result<Grant> {
        self.post("/grants", req).await
    }
    pub async fn delete_grant(&self, id: &str) -> Result<()> {
        self.delete(&format!("/grants/{}", seg(id))).await
    }

    // ------------------------------------------------------------ devices

    pub async fn devices(&self) -> Result<Vec<Device>> {
        self.get("/devices").await
    }
    pub async fn device(&self, id: &str) -> Result<Device> {
        self.get(&format!("/devices/{}", seg(id))).await
    }
    pub async fn create_device(&self, req: &CreateDevice) -> Result<CreatedDevice> {
        self.post("/devices", req).await
    }
    pub async fn update_device(&self, id: &str, req: &UpdateDevice) -> Result<Device> {
        self.patch(&format!("/devices/{}", seg(id)), req).await
    }
    pub async fn delete_device(&self, id: &str) -> Result<()> {
        self.delete(&format!("/devices/{}", seg(id))).await
    }
    pub async fn approve_device(&self, id: &str) -> Result<Device> {
        self.post_empty_body(&format!("/devices/{}/approve", seg(id)))
            .await
    }
    /// Archived devices (hidden from `devices`).
    pub async fn archived_devices(&self) -> Result<Vec<Device>> {
        self.get("/devices?archived=true").await
    }
    /// `disable`, `enable` or `archive` a device.
    pub async fn device_service(&self, id: &str, verb: &str) -> Result<Device> {
        self.post_empty_body(&format!("/devices/{}/{verb}", seg(id)))
            .await
    }
    pub async fn replace_device(&self, id: &str) -> Result<ActivationKey> {
        self.post_empty_body(&format!("/devices/{}/replace", seg(id)))
            .await
    }
    /// What an edge must trust to reach the server (enrolment files).
    pub async fn server_trust(&self) -> Result<drawbridge_proto::api::ServerTrust> {
        self.get("/server/trust").await
    }

    pub async fn new_activation_key(&self, id: &str) -> Result<ActivationKey> {
        self.post_empty_body(&format!("/devices/{}/activation-key", seg(id)))
            .await
    }
    pub async fn logbook(&self, id: &str) -> Result<Vec<LogEntry>> {
        self.get(&format!("/devices/{}/logbook", seg(id))).await
    }
    pub async fn add_log(&self, id: &str, req: &CreateLogEntry) -> Result<LogEntry> {
        self.post(&format!("/devices/{}/logbook", seg(id)), req)
            .await
    }
    pub async fn fleet_keys(&self) -> Result<Vec<FleetKey>> {
        self.get("/fleet-keys").await
    }
    pub async fn create_fleet_key(&self, req: &CreateFleetKey) -> Result<CreatedFleetKey> {
        self.post("/fleet-keys", req).await
    }
    pub async fn revoke_fleet_key(&self, id: &str) -> Result<()> {
        self.delete(&format!("/fleet-keys/{}", seg(id))).await
    }

    // ------------------------------------------------------------ sessions

    pub async fn sessions(
        &self,
        state: Option<drawbridge_proto::SessionState>,
    ) -> Result<Vec<Session>> {
        let query: Vec<(&str, String)> = state
            .map(|s| vec![("state", s.as_str().to_string())])
            .unwrap_or_default();
        self.json(Method::GET, "/sessions", &query, None).await
    }
    pub async fn session(&self, id: &str) -> Result<Session> {
        self.get(&format!("/sessions/{}", seg(id))).await
    }
    pub async fn prepare_session(&self, req: &PrepareSession) -> Result<Session> {
        self.post("/sessions", req).await
    }
    pub async fn add_session_device(&self, id: &str, req: &SessionDevice) -> Result<Session> {
        self.post(&format!("/sessions/{}/devices", seg(id)), req)
            .await
    }
    pub async fn start_session(&self, id: &str) -> Result<Session> {
        self.post_empty_body(&format!("/sessions/{}/start", seg(id)))
            .await
    }
    pub async fn end_session(&self, id: &str) -> Result<Session> {
        self.post_empty_body(&format!("/sessions/{}/end", seg(id)))
            .await
    }
    /// An approver's decision on devices waiting for approval (one, or every one an approver may decide).
    pub async fn decide_session(
        &self,
        id: &str,
        req: &drawbridge_proto::api::Decision,
    ) -> Result<Session> {
        self.post(&format!("/sessions/{}/approve", seg(id)), req)
            .await
    }
    pub async fn adhoc_session(&self, req: &AdhocSession) -> Result<Session> {
        self.post("/sessions/adhoc", req).await
    }

    // ------------------------------------------------------------ edge updates

    /// The edge releases the server's operator stored (admins).
    pub async fn releases(&self) -> Result<Vec<Release>> {
        self.get("/releases").await
    }
    /// The account's rollouts, newest first, without their devices (admins).
    pub async fn rollouts(&self) -> Result<Vec<Rollout>> {
        self.get("/rollouts").await
    }
    /// One rollout with its devices (admins).
    pub async fn rollout(&self, id: &str) -> Result<Rollout> {
        self.get(&format!("/rollouts/{}", seg(id))).await
    }
    pub async fn create_rollout(&self, req: &CreateRollout) -> Result<Rollout> {
        self.post("/rollouts", req).await
    }
    pub async fn pause_rollout(&self, id: &str) -> Result<Rollout> {
        self.post_empty_body(&format!("/rollouts/{}/pause", seg(id)))
            .await
    }
    pub async fn resume_rollout(&self, id: &str) -> Result<Rollout> {
        self.post_empty_body(&format!("/rollouts/{}/resume", seg(id)))
            .await
    }
    pub async fn cancel_rollout(&self, id: &str) -> Result<Rollout> {
        self.post_empty_body(&format!("/rollouts/{}/cancel", seg(id)))
            .await
    }
}
