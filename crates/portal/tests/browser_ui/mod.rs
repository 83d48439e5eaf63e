//! Driving the portal in Debian's Chromium (fantoccini over chromedriver):
//! the helpers the browser tests share.
#![allow(dead_code)]

use crate::common::PASSWORD;
use fantoccini::{Client, Locator};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub struct Ui {
    pub c: Client,
    pub base: String,
    pub shots: Option<PathBuf>,
}

impl Ui {
    pub async fn go(&self, path: &str) {
        self.c
            .goto(&format!("{}{path}", self.base))
            .await
            .unwrap_or_else(|e| panic!("goto {path}: {e}"));
    }
    pub async fn find(&self, css: &str) -> fantoccini::elements::Element {
        match self
            .c
            .wait()
            .at_most(Duration::from_secs(10))
            .for_element(Locator::Css(css))
            .await
        {
            Ok(el) => el,
            Err(e) => panic!(
                "no {css} on {}: {e}\n{}",
                self.url().await,
                self.source().await
            ),
        }
    }
    pub async fn fill(&self, css: &str, value: &str) {
        let el = self.find(css).await;
        el.clear().await.expect("clear");
        el.send_keys(value).await.expect("type");
    }
    pub async fn click(&self, css: &str) {
        self.find(css).await.click().await.expect("click");
    }
    /// Clicks something that loads a new page, and waits until it has.
    pub async fn submit(&self, css: &str) {
        let old = self.c.find(Locator::Css("html")).await.expect("a page");
        self.click(css).await;
        let deadline = Instant::now() + Duration::from_secs(15);
        while old.tag_name().await.is_ok() {
            assert!(Instant::now() < deadline, "clicking {css} loaded no page");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    pub async fn select(&self, css: &str, label: &str) {
        self.find(css)
            .await
            .select_by_label(label)
            .await
            .unwrap_or_else(|e| panic!("select {label} in {css}: {e}"));
    }
    pub async fn text(&self, css: &str) -> String {
        self.find(css).await.text().await.expect("text")
    }
    pub async fn source(&self) -> String {
        self.c.source().await.expect("source")
    }
    pub async fn url(&self) -> String {
        self.c
            .current_url()
            .await
            .map(|u| u.to_string())
            .unwrap_or_default()
    }
    pub async fn flash(&self) -> String {
        self.text("#flash").await
    }
    pub async fn shot(&self, name: &str) {
        if let Some(dir) = &self.shots {
            let png = self.c.screenshot().await.expect("screenshot");
            std::fs::write(dir.join(format!("{name}.png")), png).expect("write screenshot");
        }
    }
    pub async fn login(&self, account: &str, user: &str) {
        self.go("/portal/login").await;
        self.fill("input[name=account]", account).await;
        self.fill("input[name=username]", user).await;
        self.fill("input[name=password]", PASSWORD).await;
        self.submit("#login").await;
    }
    pub async fn logout(&self) {
        self.submit("#logout").await;
        self.find("#login").await;
    }
    /// No horizontal scrolling of the page itself (tables scroll in their box).
    pub async fn fits_width(&self) -> bool {
        self.c
            .execute(
                "return document.documentElement.scrollWidth <= window.innerWidth + 1;",
                vec![],
            )
            .await
            .expect("script")
            == Value::Bool(true)
    }
}

/// The text of the file `name` once the browser has downloaded it into `dir`.
pub async fn downloaded(dir: &Path, name: &str) -> String {
    let file = dir.join(name);
    let deadline = Instant::now() + Duration::from_secs(15);
    while !file.exists() {
        assert!(Instant::now() < deadline, "{name} did not download");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::fs::read_to_string(&file).expect("the download")
}

impl Ui {
    /// Waits up to `secs` until the text of `css` is `want` (the page changes
    /// it by itself); panics with what it was.
    pub async fn wait_text(&self, css: &str, want: &str, secs: u64) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            let now = self.text(css).await;
            if now == want {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{css} still shows {now:?}, not {want:?}, after {secs} s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Scrolls the element `css` to the top of the window (before a screenshot).
    pub async fn scroll_to(&self, css: &str) {
        let el = self.find(css).await;
        let el = serde_json::to_value(&el).expect("element");
        self.c
            .execute("arguments[0].scrollIntoView(true);", vec![el])
            .await
            .expect("scroll");
    }
}
