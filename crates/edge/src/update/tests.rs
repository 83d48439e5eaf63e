//! The updater's state machine in a temporary directory, with releases signed
//! by the real `drawbridge-release` (keys made here). Nothing is executed.

use super::offer::tests::{Keys, TARGET};
use super::*;
use crate::local::DeviceRecord;
use std::collections::BTreeMap;
use std::path::Path;

/// Every file under `root` with its bytes.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else {
                out.insert(p.clone(), std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

/// A port on loopback nobody listens on.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Edge {
    tmp: tempfile::TempDir,
    exe: PathBuf,
    dir: StateDir,
    updater: Updater,
}

/// An enrolled edge whose binary is "build A", pinned to `keys`' root.
fn edge(keys: &Keys) -> Edge {
    let tmp = tempfile::tempdir().unwrap();
    let bin = tmp.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let exe = bin.join("drawbridge-edge");
    std::fs::write(&exe, b"build A").unwrap();
    let dir = StateDir(tmp.path().join("state"));
    dir.save_device(&DeviceRecord {
        server: format!("https://127.0.0.1:{}", closed_port()),
        ca_file: None,
        device_id: "dev-1".into(),
        account_id: "acc-1".into(),
        certificate: None,
        ca_certificate: None,
        release_root: Some(keys.root_b64()),
    })
    .unwrap();
    let updater = updater(&dir, &exe);
    Edge {
        tmp,
        exe,
        dir,
        updater,
    }
}

fn updater(dir: &StateDir, exe: &Path) -> Updater {
    let device = dir.device().unwrap();
    let pkcs8 =
        ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
    Updater::new(Config {
        dir: dir.clone(),
        exe: exe.to_path_buf(),
        pinned: device.release_root.clone(),
        source: Source {
            server: device.server.clone(),
            tls: Arc::new(drawbridge_api_client::tls_config(None).unwrap()),
            device_id: device.device_id.clone(),
            key: Arc::new(ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap()),
        },
        health: Duration::from_secs(60),
    })
}

fn states(reports: &[UpdateReport]) -> Vec<UpdateState> {
    reports.iter().map(|r| r.state).collect()
}

fn reports(actions: Vec<Action>) -> Vec<UpdateReport> {
    actions
        .into_iter()
        .map(|a| match a {
            Action::Report(r) => r,
            Action::Install(_) => panic!("unexpected install"),
        })
        .collect()
}

#[test]
fn the_running_target_is_the_one_test_releases_are_signed_for() {
    // The tests below sign for TARGET; the edge compares with this_target().
    assert_eq!(drawbridge_release::this_target(), TARGET);
}

#[tokio::test]
async fn refused_offers_leave_the_binary_and_the_state_dir_untouched() {
    let keys = Keys::new(0, i64::MAX / 2);
    let mut e = edge(&keys);
    let before = snapshot(e.tmp.path());
    let attacker = Keys::new(0, i64::MAX / 2);
    let mut forged = attacker.offer(b"evil", "99.0.0", false);
    forged.root = keys.root_b64();
    let expired_cert = drawbridge_release::certify(
        &keys.root,
        &drawbridge_release::SigningKeyCert {
            name: "old".into(),
            public_key: keys.signing.public(),
            not_before: 0,
            not_after: 1_000,
        },
    );
    let expired = keys.offer_with(&expired_cert, b"build B", "99.0.0", false);
    let older = keys.offer(b"build 0", "0.0.1", false);
    let mut older_asked = keys.offer(b"build 0", "0.0.2", false);
    older_asked.downgrade = true; // asked, but not signed as a downgrade
    let mut lying = keys.offer(b"build B", "99.0.1", false);
    lying.sha256 = "0".repeat(64);
    for (i, o) in [forged, expired, older, older_asked, lying]
        .into_iter()
        .enumerate()
    {
        let mut o = o;
        o.rollout_id = format!("rollout-{i}");
        let r = e.updater.on_offer(Some(o)).await;
        assert_eq!(states(&r), [UpdateState::Refused], "offer {i}: {r:?}");
        assert_eq!(r[0].running, crate::version());
        assert!(
            e.updater.poll(false).is_empty(),
            "offer {i} goes no further"
        );
        assert_eq!(e.updater.status().unwrap().state, "refused");
    }
    assert_eq!(snapshot(e.tmp.path()), before);
}

#[tokio::test]
async fn an_offer_waits_while_a_session_runs_and_a_failed_download_leaves_nothing() {
    let keys = Keys::new(0, i64::MAX / 2);
    let mut e = edge(&keys);
    let before = snapshot(e.tmp.path());
    let offer = keys.offer(b"build B", "99.0.0", false);
    assert!(e.updater.on_offer(Some(offer.clone())).await.is_empty());
    // A session runs: Waiting, once.
    assert_eq!(
        states(&reports(e.updater.poll(true))),
        [UpdateState::Waiting]
    );
    assert!(e.updater.poll(true).is_empty());
    assert_eq!(e.updater.status().unwrap().state, "waiting");
    assert_eq!(snapshot(e.tmp.path()), before);
    // It ended: the download starts (to a closed port here, so it fails).
    assert_eq!(
        states(&reports(e.updater.poll(false))),
        [UpdateState::Downloading]
    );
    let o = tokio::time::timeout(Duration::from_secs(30), e.updater.next())
        .await
        .unwrap()
        .unwrap();
    let r = e.updater.on_outcome(o);
    assert_eq!(states(&r), [UpdateState::Failed], "{r:?}");
    assert!(
        e.updater.poll(false).is_empty(),
        "no retry of a failed offer"
    );
    assert_eq!(snapshot(e.tmp.path()), before);
    // The same offer again (a reconnect) answers the same report.
    assert_eq!(e.updater.on_offer(Some(offer)).await, r);
}

#[tokio::test]
async fn a_withdrawn_offer_is_forgotten() {
    let keys = Keys::new(0, i64::MAX / 2);
    let mut e = edge(&keys);
    let offer = keys.offer(b"build B", "99.0.0", false);
    assert!(e.updater.on_offer(Some(offer)).await.is_empty());
    assert!(e.updater.on_offer(None).await.is_empty());
    assert!(e.updater.poll(false).is_empty());
    assert!(e.updater.poll(true).is_empty());
}

/// A `Ready` for `binary` as the download of `offer` (as if fetched).
async fn downloaded(e: &mut Edge, keys: &Keys, binary: &[u8], version: &str) -> Box<Ready> {
    let offer = keys.offer(binary, version, false);
    let checked = offer::check(
        &offer,
        Some(&keys.root_b64()),
        crate::version(),
        TARGET,
        now(),
    )
    .unwrap();
    let download = install::download_path(&e.exe);
    std::fs::write(&download, binary).unwrap();
    Box::new(Ready {
        offer,
        checked: Box::new(checked),
        download,
    })
}

#[tokio::test]
async fn an_install_keeps_the_previous_binary_and_writes_the_trial() {
    let keys = Keys::new(0, i64::MAX / 2);
    let mut e = edge(&keys);
    let ready = downloaded(&mut e, &keys, b"build B", "99.0.0").await;
    assert_eq!(e.updater.installing(&ready).state, UpdateState::Installing);
    let rec = e.updater.install(ready).unwrap();
    assert_eq!(std::fs::read(&e.exe).unwrap(), b"build B");
    assert_eq!(
        std::fs::read(install::previous_path(&e.exe)).unwrap(),
        b"build A"
    );
    assert!(!install::download_path(&e.exe).exists());
    let on_disk = record::load(&e.dir.0).unwrap().unwrap();
    assert_eq!(on_disk, rec);
    assert_eq!(rec.state, Phase::Trial);
    assert_eq!(rec.from, crate::version());
    assert_eq!(rec.to, "99.0.0");
    assert!(rec.deadline >= now() + 59);
    assert_eq!(
        trial::decide(&e.dir.0, now()).unwrap(),
        trial::AtStart::Trial {
            deadline: rec.deadline
        }
    );
    // The new binary (same state dir) authenticates: succeeded, reported once.
    let mut b = updater(&e.dir, &e.exe);
    let r = b.on_welcome();
    assert_eq!(states(&r), [UpdateState::Succeeded]);
    b.sent(&r[0]);
    assert!(b.on_welcome().is_empty());
    // The server still offers it until it hears: the outcome, no second install.
    let again = keys.offer(b"build B", "99.0.0", false);
    let r = b.on_offer(Some(again)).await;
    assert_eq!(states(&r), [UpdateState::Succeeded]);
    assert!(b.poll(false).is_empty());
}

#[tokio::test]
async fn a_failed_exec_puts_the_previous_binary_back_and_is_reported_later() {
    let keys = Keys::new(0, i64::MAX / 2);
    let mut e = edge(&keys);
    let ready = downloaded(&mut e, &keys, b"build B", "99.0.0").await;
    let rec = e.updater.install(ready).unwrap();
    e.updater
        .exec_failed(rec, std::io::Error::other("exec format error"));
    assert_eq!(std::fs::read(&e.exe).unwrap(), b"build A");
    let r = e.updater.on_welcome();
    assert_eq!(states(&r), [UpdateState::Failed]);
    assert!(r[0].message.contains("exec format error"), "{r:?}");
}

#[tokio::test]
async fn a_rotated_root_is_pinned_when_the_release_is_installed() {
    let old = Keys::new(0, i64::MAX / 2);
    let new = Keys::new(0, i64::MAX / 2);
    let mut e = edge(&old);
    let mut offer = new.offer(b"build B", "99.0.0", false);
    offer.root = old.root_b64();
    offer.rotations = vec![drawbridge_release::rotate_root(
        &old.root,
        &new.root.public(),
        1,
    )];
    assert!(e.updater.on_offer(Some(offer.clone())).await.is_empty());
    assert_eq!(
        e.dir.device().unwrap().release_root,
        Some(old.root_b64()),
        "not pinned before the install"
    );
    let checked = offer::check(
        &offer,
        Some(&old.root_b64()),
        crate::version(),
        TARGET,
        now(),
    )
    .unwrap();
    let download = install::download_path(&e.exe);
    std::fs::write(&download, b"build B").unwrap();
    e.updater
        .install(Box::new(Ready {
            offer,
            checked: Box::new(checked),
            download,
        }))
        .unwrap();
    assert_eq!(e.dir.device().unwrap().release_root, Some(new.root_b64()));
}
