//! Stored recordings read back a few chunks at a time (a download, a VNC
//! replay's stream, an RDP replay's frames): the same bytes and the same
//! verdict as reading the whole recording, across many more chunks than one
//! read takes, and a body that is cut, not shortened, when a chunk goes
//! missing while it streams.

use crate::common;
use crate::desktop::{
    bare_recording, download, end_recording, lz4_frames, recorded, recorded_paced, sha256_hex,
};

use common::TestApp;
use drawbridge_proto::RecordingMode;
use drawbridge_server::desktop::recording::{self, FrameReader, Keep, Recording};
use http_body_util::BodyExt;

store_tests!(
    a_recording_of_many_chunks_streams_whole_and_checked_to_a_download_and_a_replay,
    a_chunk_gone_while_the_body_streams_cuts_the_body,
    frames_read_chunk_by_chunk_are_the_frames_of_the_whole_recording,
    a_watchers_start_is_the_stored_chunks_then_what_is_not_stored_yet,
    a_watcher_joining_while_chunks_wait_for_the_writer_gets_every_frame_once,
    a_recordings_length_is_its_last_frames_time_also_when_its_last_chunk_is_gone,
);

/// Eleven chunks (one per frame) of different sizes: more than a few reads.
fn frames() -> Vec<Vec<u8>> {
    (0..11u32)
        .map(|i| {
            (0..(1 + i * 3_001))
                .map(|j| (j.wrapping_mul(2_654_435_761).wrapping_add(i) >> 11) as u8)
                .collect()
        })
        .collect()
}

async fn many_chunks(app: &TestApp, acct: &common::Account) -> (String, String) {
    let frames = frames();
    let refs: Vec<&[u8]> = frames.iter().map(|f| f.as_slice()).collect();
    let (id, sha) = recorded(
        app,
        &acct.id,
        &acct.admin_id,
        &refs,
        RecordingMode::Required,
    )
    .await;
    (id, sha.expect("a hash on the record"))
}

async fn body_of(s: recording::Streamed) -> Result<Vec<u8>, axum::Error> {
    Ok(s.body.collect().await?.to_bytes().to_vec())
}

async fn a_recording_of_many_chunks_streams_whole_and_checked_to_a_download_and_a_replay(
    app: TestApp,
) {
    let acct = app.account("acme").await;
    let (id, sha) = many_chunks(&app, &acct).await;
    let whole = recording::read(&app.state, &id, None).await.unwrap();
    assert!(whole.intact);
    let chunks: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM recording_chunks WHERE recording_id = $1")
            .bind(&id)
            .fetch_one(&app.state.store.pool)
            .await
            .unwrap();
    assert_eq!(chunks, 11);

    // The download (through the API) is the file, checked before it starts.
    let (s, h, file) = download(&app, &id, &acct.admin).await;
    assert_eq!(s, axum::http::StatusCode::OK);
    assert_eq!(h["x-recording-intact"], "true");
    assert_eq!(h["x-recording-sha256"], sha.as_str());
    assert_eq!(sha256_hex(&file), sha);
    assert_eq!(file, whole.file);
    assert_eq!(lz4_frames(&file), whole.stream);

    // The replay's body is the framed stream.
    let replay = recording::streamed(&app.state, &id, Keep::Stream)
        .await
        .unwrap();
    assert!(replay.intact);
    assert_eq!(replay.sha256, sha);
    assert_eq!(body_of(replay).await.unwrap(), whole.stream);

    // Two chunks swapped: the verdict before the body says so, and the bodies
    // leave out what the whole read leaves out.
    let pool = &app.state.store.pool;
    for (from, to) in [(3, -1), (4, 3), (-1, 4)] {
        sqlx::query("UPDATE recording_chunks SET seq = $1 WHERE recording_id = $2 AND seq = $3")
            .bind(to)
            .bind(&id)
            .bind(from)
            .execute(pool)
            .await
            .unwrap();
    }
    let damaged = recording::read(&app.state, &id, None).await.unwrap();
    assert!(!damaged.intact);
    let (_, h, file) = download(&app, &id, &acct.admin).await;
    assert_eq!(h["x-recording-intact"], "false");
    assert_eq!(file, damaged.file);
    let replay = recording::streamed(&app.state, &id, Keep::Stream)
        .await
        .unwrap();
    assert!(!replay.intact);
    assert_eq!(body_of(replay).await.unwrap(), damaged.stream);
}

async fn a_chunk_gone_while_the_body_streams_cuts_the_body(app: TestApp) {
    let acct = app.account("acme").await;
    for keep in [Keep::File, Keep::Stream] {
        let (id, _) = many_chunks(&app, &acct).await;
        let s = recording::streamed(&app.state, &id, keep).await.unwrap();
        assert!(s.intact, "{keep:?}: checked whole");
        // Gone after the check, before the body reaches it.
        sqlx::query("DELETE FROM recording_chunks WHERE recording_id = $1 AND seq = 9")
            .bind(&id)
            .execute(&app.state.store.pool)
            .await
            .unwrap();
        assert!(
            body_of(s).await.is_err(),
            "{keep:?}: a cut transfer, not a shorter file"
        );
    }
}

async fn frames_read_chunk_by_chunk_are_the_frames_of_the_whole_recording(app: TestApp) {
    let acct = app.account("acme").await;
    let (id, sha) = many_chunks(&app, &acct).await;
    let whole = recording::read(&app.state, &id, None).await.unwrap();
    let want: Vec<(u32, Vec<u8>)> = drawbridge_desktop::recording::frames(&whole.stream)
        .unwrap()
        .iter()
        .map(|f| (f.t_ms, f.data.to_vec()))
        .collect();
    assert_eq!(
        want.iter().map(|(_, d)| d.clone()).collect::<Vec<_>>(),
        frames()
    );
    let mut reader = FrameReader::open(&app.state, &id).await.unwrap();
    let mut got = Vec::new();
    let mut reads = 0;
    while let Some(batch) = reader.next_frames().await.unwrap() {
        reads += 1;
        got.extend(batch.into_iter().map(|(t, d)| (t, d.to_vec())));
    }
    assert_eq!(got, want);
    assert_eq!(reads, 11, "one chunk's frames at a time");
    assert_eq!(reader.finish(), (sha, true));
}

async fn a_watchers_start_is_the_stored_chunks_then_what_is_not_stored_yet(app: TestApp) {
    let acct = app.account("acme").await;
    let id = bare_recording(&app, &acct, RecordingMode::Required).await;
    let frames = frames();
    let mut r = vnc_recording(&id);
    // Seven frames in four stored chunks, four more not stored yet.
    for (i, f) in frames.iter().enumerate() {
        r.record(&bytes::Bytes::copy_from_slice(f)).unwrap();
        if i < 7 && i % 2 == 0 {
            r.store(&app.state).await.unwrap();
        }
    }
    // The writer done with the chunks handed to it (the frames after them
    // still pending), what a watcher joining now is given: chunks `0..first`
    // from the database, then the rest from memory.
    assert!(r.finish().await.is_some());
    let (first, unstored) = r.unstored().unwrap();
    assert_eq!(first, 4, "chunks stored");
    assert!(!unstored.is_empty());
    assert_eq!(
        joined(&app, &id, first, unstored).await,
        frames,
        "every frame once, in order"
    );
}

/// A required VNC recording of at most 1 MiB.
fn vnc_recording(id: &str) -> Recording {
    Recording::new(
        id.to_string(),
        RecordingMode::Required,
        1,
        drawbridge_desktop::recording::HEADER,
    )
}

/// The bodies of every frame a reader gives, in order.
async fn bodies(reader: &mut FrameReader) -> Vec<Vec<u8>> {
    let mut got = Vec::new();
    while let Some(batch) = reader.next_frames().await.unwrap() {
        got.extend(batch.into_iter().map(|(_, d)| d.to_vec()));
    }
    got
}

/// The frames a watcher joining now is given: the stored chunks before
/// `first` from the database, then `unstored`.
async fn joined(app: &TestApp, id: &str, first: i64, unstored: Vec<u8>) -> Vec<Vec<u8>> {
    let mut reader = FrameReader::open_with_tail(&app.state, id, Some(first), unstored)
        .await
        .unwrap();
    bodies(&mut reader).await
}

async fn a_watcher_joining_while_chunks_wait_for_the_writer_gets_every_frame_once(app: TestApp) {
    let acct = app.account("acme").await;
    let id = bare_recording(&app, &acct, RecordingMode::Required).await;
    let frames = frames();
    let mut r = vnc_recording(&id);
    let mut waited_for_the_writer = false;
    let mut handed = 0;
    for (i, f) in frames.iter().enumerate() {
        r.record(f).unwrap();
        if i % 3 == 1 {
            // Handed to the writer, which has not run yet: the chunk is in
            // its queue (compressed) while the watcher joins.
            r.store(&app.state).await.unwrap();
            handed += 1;
        }
        // A watcher joins after every frame: the open chunk is read as it
        // stands, and recording goes on into it.
        let (first, unstored) = r.unstored().unwrap();
        waited_for_the_writer |= first < handed;
        assert_eq!(
            joined(&app, &id, first, unstored).await,
            frames[..=i],
            "a watcher joining after frame {i} (chunks from {first} not stored yet)"
        );
    }
    assert!(
        waited_for_the_writer,
        "some watcher joined while a chunk waited for the writer"
    );
    r.store(&app.state).await.unwrap();
    let sha = r.finish().await;
    end_recording(&app, &id, &sha).await;
    // The stored recording is whole: every frame once, and the hash of what
    // was stored, although the open chunk was read for watchers on the way.
    let mut reader = FrameReader::open(&app.state, &id).await.unwrap();
    assert_eq!(bodies(&mut reader).await, frames);
    assert_eq!(reader.finish(), (sha.expect("a hash"), true));
}

/// Every frame's time, from a whole read of the recording.
async fn frame_times(app: &TestApp, id: &str) -> Vec<u32> {
    let mut reader = FrameReader::open(&app.state, id).await.unwrap();
    let mut times = Vec::new();
    while let Some(batch) = reader.next_frames().await.unwrap() {
        times.extend(batch.iter().map(|(t, _)| *t));
    }
    times
}

async fn a_recordings_length_is_its_last_frames_time_also_when_its_last_chunk_is_gone(
    app: TestApp,
) {
    let acct = app.account("acme").await;
    let frames = frames();
    let refs: Vec<&[u8]> = frames.iter().map(|f| f.as_slice()).collect();
    // 15 ms between frames: their times differ, so the last one is known.
    let (id, sha) = recorded_paced(
        &app,
        &acct.id,
        &acct.admin_id,
        &refs,
        RecordingMode::Required,
        std::time::Duration::from_millis(15),
    )
    .await;
    let times = frame_times(&app, &id).await;
    assert_eq!(times.len(), 11);
    assert!(times[10] > times[9] && times[9] > 0, "{times:?}");

    // Read from the last chunk alone: the same length, hash and verdict as
    // a whole read.
    let l = recording::length(&app.state, &id).await.unwrap();
    assert_eq!(l.end_ms, times[10]);
    assert_eq!(Some(l.sha256), sha);
    assert!(l.intact);

    // The last chunk removed: not intact, and the length is that of what is
    // left (every chunk read for it).
    sqlx::query("DELETE FROM recording_chunks WHERE recording_id = $1 AND seq = 10")
        .bind(&id)
        .execute(&app.state.store.pool)
        .await
        .unwrap();
    let l = recording::length(&app.state, &id).await.unwrap();
    assert_eq!(l.end_ms, times[9]);
    assert!(!l.intact);

    // No chunks at all: no length, not the recording on the record.
    let bare = bare_recording(&app, &acct, RecordingMode::Required).await;
    let l = recording::length(&app.state, &bare).await.unwrap();
    assert_eq!(l.end_ms, 0);
}
