use super::*;

fn page(entries: &[(&str, u64)], next: &str, more: bool) -> Vec<u8> {
    serde_json::to_vec(&Page {
        revoked: entries
            .iter()
            .map(|(s, u)| Revoked {
                session: s.to_string(),
                until: *u,
            })
            .collect(),
        next: next.into(),
        more,
    })
    .unwrap()
}

#[test]
fn a_page_revokes_its_sessions_and_moves_the_cursor() {
    let mut f = Feed::new();
    assert_eq!(
        f.cursor(),
        "",
        "the first request starts from the beginning"
    );
    let step = f.handle(Ok((
        200,
        &page(&[("s1", 100), ("s2", 200)], "10.s2", false),
    )));
    assert_eq!(step.error, None);
    assert_eq!(
        step.revoke,
        vec![
            Revoked {
                session: "s1".into(),
                until: 100
            },
            Revoked {
                session: "s2".into(),
                until: 200
            },
        ]
    );
    assert_eq!(f.cursor(), "10.s2");
    assert_eq!(
        step.wait, POLL_EVERY,
        "caught up: the next poll after the interval"
    );
}

#[test]
fn more_pages_are_asked_for_at_once() {
    let mut f = Feed::new();
    let step = f.handle(Ok((200, &page(&[("s1", 100)], "5.s1", true))));
    assert_eq!(step.wait, Duration::ZERO);
    assert_eq!(f.cursor(), "5.s1");
    let step = f.handle(Ok((200, &page(&[], "7.", false))));
    assert!(step.revoke.is_empty());
    assert_eq!(
        f.cursor(),
        "7.",
        "the control plane may move the cursor back or on"
    );
    assert_eq!(step.wait, POLL_EVERY);
}

#[test]
fn failures_keep_the_cursor_and_back_off_up_to_the_limit() {
    let mut f = Feed::new();
    f.handle(Ok((200, &page(&[], "3.a", false))));
    let waits: Vec<Duration> = (0..8)
        .map(|_| {
            let step = f.handle(Err(FeedError::Transport("refused".into())));
            assert!(step.revoke.is_empty());
            assert!(matches!(step.error, Some(FeedError::Transport(_))));
            step.wait
        })
        .collect();
    let secs: Vec<u64> = waits.iter().map(Duration::as_secs).collect();
    assert_eq!(secs, [2, 4, 8, 16, 30, 30, 30, 30]);
    assert_eq!(f.cursor(), "3.a", "a failure never moves the cursor");
    assert_eq!(f.failures(), 8);
    let step = f.handle(Ok((200, &page(&[("s9", 9)], "4.s9", false))));
    assert!(
        step.recovered,
        "the first good reply after failures is told"
    );
    assert_eq!(step.wait, POLL_EVERY, "the backoff ends with a good reply");
    assert_eq!(f.failures(), 0);
    let step = f.handle(Ok((200, &page(&[], "4.s9", false))));
    assert!(!step.recovered);
}

#[test]
fn refusals_and_error_statuses_are_failures() {
    for (status, want) in [
        (401, FeedError::Refused(401)),
        (403, FeedError::Refused(403)),
        (500, FeedError::Status(500)),
        (302, FeedError::Status(302)),
    ] {
        let mut f = Feed::new();
        // Even a body that would parse is not used with a status other than 200.
        let step = f.handle(Ok((status, &page(&[("s1", 1)], "1.s1", false))));
        assert_eq!(step.error, Some(want));
        assert!(step.revoke.is_empty());
        assert_eq!(f.cursor(), "");
    }
}

#[test]
fn bad_and_oversized_replies_are_refused_whole() {
    let long_id = "x".repeat(MAX_SESSION_ID_LEN + 1);
    let too_many: Vec<(String, u64)> = (0..=MAX_PAGE).map(|i| (format!("s{i}"), 1)).collect();
    let too_many: Vec<(&str, u64)> = too_many.iter().map(|(s, u)| (s.as_str(), *u)).collect();
    let cases: Vec<(Vec<u8>, FeedError)> = vec![
        (b"not json".to_vec(), FeedError::Malformed),
        (b"[]".to_vec(), FeedError::Malformed),
        (
            br#"{"revoked":[],"next":"1.","more":false,"extra":1}"#.to_vec(),
            FeedError::Malformed,
        ),
        (
            br#"{"revoked":[{"session":"s","until":-1}],"next":"1.","more":false}"#.to_vec(),
            FeedError::Malformed,
        ),
        (page(&[("", 1)], "1.", false), FeedError::OutOfBounds),
        (page(&[(&long_id, 1)], "1.", false), FeedError::OutOfBounds),
        (
            page(&[("s", 1)], &"9".repeat(MAX_CURSOR_LEN + 1), false),
            FeedError::OutOfBounds,
        ),
        (page(&too_many, "1.", false), FeedError::OutOfBounds),
        (vec![b' '; MAX_BODY + 1], FeedError::TooLarge),
    ];
    for (body, want) in cases {
        let mut f = Feed::new();
        f.handle(Ok((200, &page(&[], "2.", false))));
        let step = f.handle(Ok((200, &body)));
        assert_eq!(
            step.error,
            Some(want),
            "{}",
            String::from_utf8_lossy(&body[..body.len().min(80)])
        );
        assert!(step.revoke.is_empty(), "nothing of a bad reply is used");
        assert_eq!(f.cursor(), "2.");
        assert_eq!(
            step.wait, POLL_EVERY,
            "the first failure waits one interval"
        );
    }
}

#[test]
fn a_credential_verifies_with_its_key_only_and_until_it_expires() {
    let (k, _) = SigningKey::generate().unwrap();
    let (other, _) = SigningKey::generate().unwrap();
    let cred = Credential {
        relay: "eu-1".into(),
        expires_at: 1_000,
    };
    let c = issue_credential(&k, &cred).unwrap();
    assert_eq!(
        verify_credential(&k.verifying_key(), &c, 999),
        Ok(cred.clone())
    );
    assert_eq!(
        verify_credential(&k.verifying_key(), &c, 1_000),
        Err(TokenError::Expired)
    );
    let foreign = issue_credential(&other, &cred).unwrap();
    assert_eq!(
        verify_credential(&k.verifying_key(), &foreign, 0),
        Err(TokenError::BadSignature)
    );
    for garbage in [
        "",
        "drf1",
        "drf1..",
        "drf1.e30.AAAA",
        &"a".repeat(MAX_CREDENTIAL_LEN + 1),
    ] {
        assert!(verify_credential(&k.verifying_key(), garbage, 0).is_err());
    }
}

#[test]
fn credentials_and_admission_tokens_are_not_interchangeable() {
    let (k, _) = SigningKey::generate().unwrap();
    let vk = k.verifying_key();
    let admission = crate::token::issue(
        &k,
        &crate::token::Claims {
            session_id: "s".into(),
            peer: [1; 32],
            allowed_peers: vec![],
            expires_at: 1_000,
            bridge: false,
        },
    )
    .unwrap();
    assert_eq!(
        verify_credential(&vk, &admission, 0),
        Err(TokenError::Malformed)
    );
    let cred = issue_credential(
        &k,
        &Credential {
            relay: "r".into(),
            expires_at: 1_000,
        },
    )
    .unwrap();
    assert!(crate::token::verify(&vk, &cred, 0).is_err());
    // The same body under the other prefix does not verify either: the prefix is signed.
    let swapped = cred.replacen("drf1", "drt1", 1);
    assert_eq!(
        crate::token::verify(&vk, &swapped, 0),
        Err(TokenError::BadSignature)
    );
}
