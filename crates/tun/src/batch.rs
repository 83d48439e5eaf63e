//! Batched reads and writes with the kernel's TUN offloads (Linux `IFF_VNET_HDR`).
//!
//! With offloads on, one read can return a TCP segmentation-offload "super-packet" of up
//! to 64 KiB that tun-rs splits into MTU-sized packets ([`RecvBatch`]), and one write can
//! hand the kernel many packets of one TCP flow coalesced into one (GRO, [`SendBatch`]).
//! A bulk TCP transfer then costs one system call per ~45 packets instead of one each.
//! Without offloads (the kernel refused them) the same types move one packet per call.

use tun_rs::{GROTable, IDEAL_BATCH_SIZE, VIRTIO_NET_HDR_LEN};

/// Most packets one read yields (a 64 KiB super-packet in segments of 1380 bytes is 48).
pub const BATCH: usize = IDEAL_BATCH_SIZE;

/// Room for one segment: jumbo-frame sized, so an administrator's larger MTU still fits.
const SEGMENT: usize = 9216;

/// Buffers for [`crate::TunDevice::recv_batch`]: the raw read and the packets split from it.
pub struct RecvBatch {
    raw: Vec<u8>,
    bufs: Vec<Vec<u8>>,
    sizes: Vec<usize>,
    count: usize,
}

impl Default for RecvBatch {
    fn default() -> Self {
        RecvBatch {
            raw: vec![0; VIRTIO_NET_HDR_LEN + 65535],
            // The first slot also takes a whole packet read without offloads.
            bufs: (0..BATCH)
                .map(|i| vec![0; if i == 0 { 65535 } else { SEGMENT }])
                .collect(),
            sizes: vec![0; BATCH],
            count: 0,
        }
    }
}

impl RecvBatch {
    /// The packets of the last read.
    pub fn packets(&self) -> impl Iterator<Item = &[u8]> {
        self.bufs[..self.count]
            .iter()
            .zip(&self.sizes)
            .map(|(b, &n)| &b[..n.min(b.len())])
    }

    pub(crate) fn parts(&mut self) -> (&mut [u8], &mut [Vec<u8>], &mut [usize]) {
        (&mut self.raw, &mut self.bufs, &mut self.sizes)
    }

    pub(crate) fn set_count(&mut self, n: usize) {
        self.count = n.min(BATCH);
    }
}

/// Packets queued for one [`crate::TunDevice::send_batch`]; each buffer keeps room in
/// front for the virtio header the kernel expects with offloads on.
#[derive(Default)]
pub struct SendBatch {
    bufs: Vec<Vec<u8>>,
    len: usize,
    pub(crate) gro: GROTable,
}

impl SendBatch {
    /// Queues a copy of `packet`. Returns false (and queues nothing) when the batch is
    /// full ([`BATCH`] packets): send it first.
    pub fn push(&mut self, packet: &[u8]) -> bool {
        if self.len >= BATCH {
            return false;
        }
        if self.len == self.bufs.len() {
            // Room to coalesce a whole 64 KiB write in place (tun-rs does not grow a
            // buffer for it); the pages are only touched as far as they are used.
            self.bufs.push(Vec::with_capacity(
                2 * VIRTIO_NET_HDR_LEN + u16::MAX as usize,
            ));
        }
        let b = &mut self.bufs[self.len];
        b.clear();
        b.resize(VIRTIO_NET_HDR_LEN, 0);
        b.extend_from_slice(packet);
        self.len += 1;
        true
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn is_full(&self) -> bool {
        self.len >= BATCH
    }

    /// The queued packets (with their header room) and the batch's GRO table; empties
    /// the batch (the buffers are kept for reuse).
    pub(crate) fn take(&mut self) -> (&mut [Vec<u8>], &mut GROTable) {
        let n = std::mem::take(&mut self.len);
        (&mut self.bufs[..n], &mut self.gro)
    }
}

/// Offset of the packet in each [`SendBatch`] buffer.
pub(crate) const SEND_OFFSET: usize = VIRTIO_NET_HDR_LEN;

#[cfg(test)]
mod tests {
    use super::*;

    /// An IPv4/TCP packet of `flow` with sequence number `seq` and `len` payload bytes.
    fn tcp(flow: u16, seq: u32, len: usize, flags: u8) -> Vec<u8> {
        let total = 40 + len;
        let mut p = vec![0u8; total];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[6] = 0x40; // DF
        p[8] = 64;
        p[9] = 6;
        p[12..16].copy_from_slice(&[192, 168, 1, 10]);
        p[16..20].copy_from_slice(&[100, 64, 0, 2]);
        let ip_sum = tun_rs::checksum(&p[..20], 0);
        p[10..12].copy_from_slice(&(!ip_sum).to_be_bytes());
        p[20..22].copy_from_slice(&5201u16.to_be_bytes());
        p[22..24].copy_from_slice(&flow.to_be_bytes());
        p[24..28].copy_from_slice(&seq.to_be_bytes());
        p[32] = 0x50;
        p[33] = flags;
        p[34..36].copy_from_slice(&512u16.to_be_bytes());
        for (i, b) in p[40..].iter_mut().enumerate() {
            *b = (seq as usize + i) as u8;
        }
        let mut pseudo = [0u8; 12];
        pseudo[..8].copy_from_slice(&p[12..20]);
        pseudo[9] = 6;
        pseudo[10..12].copy_from_slice(&((total - 20) as u16).to_be_bytes());
        let sum = tun_rs::checksum(&p[20..], tun_rs::checksum_no_fold(&pseudo, 0));
        p[36..38].copy_from_slice(&(!sum).to_be_bytes());
        p
    }

    /// tun-rs's coalescing as `send_multiple` runs it; returns the buffers to write.
    fn gro(bufs: &mut [Vec<u8>]) -> std::io::Result<Vec<usize>> {
        let (mut tcp_table, mut udp_table) = (Default::default(), Default::default());
        let mut to_write = Vec::new();
        tun_rs::handle_gro(
            bufs,
            SEND_OFFSET,
            &mut tcp_table,
            &mut udp_table,
            false,
            &mut to_write,
        )?;
        assert!(to_write.iter().all(|&i| i < bufs.len()));
        Ok(to_write)
    }

    #[test]
    fn a_full_batch_refuses_more_and_take_empties_it() {
        let mut b = SendBatch::default();
        for i in 0..BATCH {
            assert!(b.push(&[i as u8; 20]));
        }
        assert!(b.is_full());
        assert!(!b.push(&[0; 20]));
        let (bufs, _) = b.take();
        assert_eq!(bufs.len(), BATCH);
        assert!(bufs.iter().all(|x| x.len() == SEND_OFFSET + 20));
        assert!(b.is_empty());
    }

    /// What the tunnel hands to `send_batch` comes from the peer: tun-rs's coalescing
    /// must not panic and must only name buffers of the batch, whatever the bytes.
    /// (Whether it merges correctly is the next test's subject; a batch it refuses as
    /// a whole is dropped like any unwritable packet.)
    #[test]
    fn coalescing_survives_hostile_packets() {
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let mut rnd = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for round in 0..2000 {
            let mut b = SendBatch::default();
            let mut seq = 1000u32;
            for i in 0..(rnd() % 40 + 1) {
                let len = (rnd() % 1400) as usize;
                let mut p = tcp((rnd() % 3) as u16, seq, len, 0x10 | (rnd() % 2 * 8) as u8);
                seq = seq.wrapping_add(len as u32);
                // Corrupt some of them: flip bytes, truncate, or lie about lengths.
                match (rnd() % 6, round % 3) {
                    (0, _) => {
                        let at = (rnd() as usize) % p.len();
                        p[at] ^= rnd() as u8;
                    }
                    (1, _) => p.truncate((rnd() as usize) % (p.len() + 1)),
                    (2, 0) => p[2..4].copy_from_slice(&(rnd() as u16).to_be_bytes()),
                    (3, 1) => p[32] = (rnd() as u8) & 0xf0,
                    (4, 2) => p[0] = rnd() as u8,
                    _ => {}
                }
                if i % 7 == 6 {
                    p = (0..(rnd() % 100)).map(|_| rnd() as u8).collect();
                }
                b.push(&p);
            }
            let (bufs, _) = b.take();
            let _ = gro(bufs);
            // (Checked inside `gro`: every index it returns is a buffer of the batch.)
        }
    }

    #[test]
    fn consecutive_segments_of_one_flow_are_coalesced_into_one_write() {
        let mut b = SendBatch::default();
        let mut seq = 1;
        for _ in 0..10 {
            b.push(&tcp(7, seq, 1000, 0x10));
            seq += 1000;
        }
        let (bufs, _) = b.take();
        let to_write = gro(bufs).unwrap();
        assert_eq!(to_write.len(), 1, "ten segments of one flow: one write");
        assert_eq!(bufs[to_write[0]].len(), SEND_OFFSET + 40 + 10 * 1000);
    }
}
