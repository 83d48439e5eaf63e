use super::*;
use drawbridge_proto::data::Quality;

fn items(n: usize, start: usize) -> Vec<(i64, TagName, RecordBody)> {
    (start..start + n)
        .map(|i| {
            (
                1_700_000_000_000 + i as i64,
                TagName::try_from("t").unwrap(),
                RecordBody::Point {
                    value: Some(i as f64),
                    quality: Quality::Good,
                },
            )
        })
        .collect()
}

fn seqs(b: &Buffer) -> Vec<u64> {
    b.pending(usize::MAX)
        .unwrap()
        .iter()
        .map(|r| r.seq)
        .collect()
}

fn cfg(max: u64, seg: u64) -> BufferConfig {
    BufferConfig {
        max_records: max,
        segment_records: seg,
    }
}

#[test]
fn a_restart_keeps_everything_unacknowledged_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = Buffer::open(dir.path(), cfg(1000, 4)).unwrap();
    let stream = b.stream().to_string();
    assert_eq!(b.append(items(3, 0)).unwrap(), Some(3));
    assert_eq!(b.append(items(7, 3)).unwrap(), Some(10));
    drop(b);
    let b = Buffer::open(dir.path(), cfg(1000, 4)).unwrap();
    assert_eq!(b.stream(), stream, "the stream is kept");
    assert_eq!(seqs(&b), (1..=10).collect::<Vec<_>>());
    let recs = b.pending(3).unwrap();
    assert_eq!(recs.len(), 3);
    assert_eq!(recs[2].body, items(1, 2)[0].2);
    assert_eq!(b.status().pending, 10);
}

#[test]
fn acknowledgements_survive_a_restart_and_delete_whole_segments() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = Buffer::open(dir.path(), cfg(1000, 4)).unwrap();
    b.append(items(10, 0)).unwrap();
    let stream = b.stream().to_string();
    assert!(
        !b.ack("another-stream", 9).unwrap(),
        "another stream's ack changes nothing"
    );
    assert!(
        !b.ack(&stream, 11).unwrap(),
        "records never given out are not acknowledged"
    );
    assert!(b.ack(&stream, 6).unwrap());
    assert!(!b.ack(&stream, 5).unwrap(), "an older ack changes nothing");
    assert_eq!(seqs(&b), vec![7, 8, 9, 10]);
    let segs = |d: &Path| {
        let mut v: Vec<String> = std::fs::read_dir(d)
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().to_string())
            .filter(|n| n.ends_with(".seg"))
            .collect();
        v.sort();
        v
    };
    // 1–4 went with their segment; 5–8 still holds 7 and 8.
    assert_eq!(segs(dir.path()), vec![segment_name(5), segment_name(9)]);
    drop(b);
    let mut b = Buffer::open(dir.path(), cfg(1000, 4)).unwrap();
    assert_eq!(seqs(&b), vec![7, 8, 9, 10]);
    assert!(b.ack(&stream, 10).unwrap());
    assert!(segs(dir.path()).is_empty());
    assert_eq!(b.status().pending, 0);
    drop(b);
    let mut b = Buffer::open(dir.path(), cfg(1000, 4)).unwrap();
    assert_eq!(
        b.append(items(1, 0)).unwrap(),
        Some(11),
        "seq goes on after everything was acknowledged"
    );
}

#[test]
fn seq_never_repeats_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for round in 0..5 {
        let mut b = Buffer::open(dir.path(), cfg(1000, 3)).unwrap();
        let first = b.next_seq();
        let last = b.append(items(4, 0)).unwrap().unwrap();
        for s in first..=last {
            assert!(seen.insert(s), "seq {s} handed out twice");
        }
        if round % 2 == 1 {
            let stream = b.stream().to_string();
            b.ack(&stream, last).unwrap();
        }
    }
    assert_eq!(seen.len(), 20);
}

#[test]
fn a_torn_or_damaged_tail_is_dropped_and_appends_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = Buffer::open(dir.path(), cfg(1000, 100)).unwrap();
    b.append(items(5, 0)).unwrap();
    drop(b);
    let seg = dir.path().join(segment_name(1));
    let len = std::fs::metadata(&seg).unwrap().len();
    // A torn last record: the file ends in its middle.
    let f = OpenOptions::new().write(true).open(&seg).unwrap();
    f.set_len(len - 7).unwrap();
    drop(f);
    let mut b = Buffer::open(dir.path(), cfg(1000, 100)).unwrap();
    assert_eq!(seqs(&b), vec![1, 2, 3, 4]);
    assert_eq!(
        b.append(items(2, 10)).unwrap(),
        Some(6),
        "the torn seq was never given out: it is free"
    );
    drop(b);
    let b = Buffer::open(dir.path(), cfg(1000, 100)).unwrap();
    assert_eq!(seqs(&b), vec![1, 2, 3, 4, 5, 6]);
    assert_eq!(b.pending(10).unwrap()[4].body, items(1, 10)[0].2);
    drop(b);
    // Garbage written after the last record (a power loss mid-append).
    let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
    f.write_all(&[0xAB; 100]).unwrap();
    drop(f);
    // A flipped bit inside the last record.
    let mut bytes = std::fs::read(&seg).unwrap();
    let n = bytes.len();
    bytes[n - 110] ^= 1;
    std::fs::write(&seg, &bytes).unwrap();
    let mut b = Buffer::open(dir.path(), cfg(1000, 100)).unwrap();
    assert_eq!(seqs(&b), vec![1, 2, 3, 4, 5]);
    assert_eq!(b.append(items(1, 0)).unwrap(), Some(6));
    assert_eq!(seqs(&b), vec![1, 2, 3, 4, 5, 6]);
}

#[test]
fn the_bound_drops_the_oldest_and_counts_them_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = Buffer::open(dir.path(), cfg(10, 4)).unwrap();
    b.append(items(8, 0)).unwrap();
    b.append(items(5, 8)).unwrap(); // 13 > 10: 1, 2, 3 dropped
    assert_eq!(seqs(&b), (4..=13).collect::<Vec<_>>());
    assert_eq!(b.status().dropped, 3);
    assert_eq!(b.status().pending, 10);
    drop(b);
    let mut b = Buffer::open(dir.path(), cfg(10, 4)).unwrap();
    assert_eq!(b.status().dropped, 3);
    assert_eq!(seqs(&b), (4..=13).collect::<Vec<_>>());
    // A batch larger than the bound keeps its newest records.
    b.append(items(12, 100)).unwrap();
    assert_eq!(b.status().dropped, 3 + 10 + 2);
    let recs = b.pending(100).unwrap();
    assert_eq!(
        recs.iter().map(|r| r.seq).collect::<Vec<_>>(),
        (14..=23).collect::<Vec<_>>(),
        "records dropped before they were stored get no seq"
    );
    assert_eq!(recs[0].body, items(1, 102)[0].2);
    // Acknowledged records do not count against the bound.
    let stream = b.stream().to_string();
    b.ack(&stream, 23).unwrap();
    b.append(items(10, 0)).unwrap();
    assert_eq!(b.status().dropped, 15);
}

#[test]
fn a_state_file_without_segments_starts_clean_and_leftover_segments_without_state_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = Buffer::open(dir.path(), cfg(10, 4)).unwrap();
    b.append(items(3, 0)).unwrap();
    let old = b.stream().to_string();
    drop(b);
    std::fs::remove_file(dir.path().join("state.json")).unwrap();
    let b = Buffer::open(dir.path(), cfg(10, 4)).unwrap();
    assert_ne!(b.stream(), old, "a new stream");
    assert_eq!(b.next_seq(), 1, "whose seq starts at 1");
    assert!(seqs(&b).is_empty());
}
