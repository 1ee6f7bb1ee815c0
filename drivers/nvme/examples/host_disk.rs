//! An NVMe disk on the host, end to end: the driver brought up on the controller model
//! (`nvme::fake`), the block layer's queue on top, a pattern written through a bio and read
//! back through the queue.
//!
//! It does what a kernel does at boot (see `docs/porting.md`), with the host standing in for
//! the hardware: DMA memory is leaked host memory, BAR0 is a page of it the model watches, and
//! the "interrupt" is the wait hook letting the model run and calling the driver's handler.
//!
//! `cargo run -p nvme --example host_disk --features fake`; `cargo test -p nvme` runs it too.

use std::sync::Arc;

use blk::mem::DmaRegion;
use blk::{BioSet, BioSlab, BlkStatus, CpuCtx, Op, Queue, QueueConfig, Wait, submit_bio_wait};
use hal::DmaBuf;
use nvme::fake::{self, FakeCtrl};
use nvme::{Config, Mode, Nvme, QUEUE_DEPTH};
use spin::Once;

/// Blocks of the model's namespace, and their size.
const BLOCKS: u64 = 8192;
const BLOCK_SIZE: u32 = 512;
/// Where the pattern goes (a 512-byte sector), and how much of it: two segments of 8 KiB.
const SECTOR: u64 = 2048;
const SEG: usize = 8192;

/// The controller model, the driver and the block layer's queue, kept for good as a kernel
/// keeps them (the queue hands the driver a `&'static` to complete on).
static FAKE: Once<Arc<FakeCtrl>> = Once::new();
static HW: Once<Nvme> = Once::new();
static QUEUE: Once<Queue<QUEUE_DEPTH>> = Once::new();

/// Bios: the queue's set for splits, and one for this program's I/O.
static SPLIT_SLAB: BioSlab<(), 16> = BioSlab::new();
static SPLIT_SET: BioSet<()> = BioSet::new(&SPLIT_SLAB, 2, None);
static IO_SLAB: BioSlab<(), 8> = BioSlab::new();
static IO_SET: BioSet<()> = BioSet::new(&IO_SLAB, 2, None);

/// The one CPU's submission context.
static CPU: CpuCtx = CpuCtx::new(0);

/// The wait hook (the queue's, and `submit_bio_wait`'s): where a kernel would halt until an
/// interrupt, let the controller run what the driver rang for, then take its "interrupt".
fn wait() {
    if let (Some(f), Some(hw)) = (FAKE.get(), HW.get()) {
        f.step();
        hw.handle_irq();
    }
}

/// One bio of `op` at [`SECTOR`] over two segments of `region`, submitted to the queue and
/// waited for.
fn io(queue: &'static Queue<QUEUE_DEPTH>, op: Op, region: &DmaRegion) -> BlkStatus {
    let mut bio = IO_SET.alloc((), op, 2, Wait::Never).expect("a bio");
    for k in 0..2 {
        // Two pieces a page apart, so the request carries a real scatter-gather list.
        let seg = region
            .segment(k * (SEG + 4096), SEG as u32)
            .expect("inside");
        bio.add_vec(seg).expect("room for two segments");
    }
    bio.set_sector(SECTOR);
    bio.set_dev(queue);
    let (status, bio) = submit_bio_wait(&CPU, bio, wait);
    drop(bio);
    status
}

/// Brings the disk up, writes the pattern, reads it back, checks it; panics on any mismatch.
fn run() {
    // 1. DMA memory: leaked host memory in which a buffer's physical address is its pointer.
    hal::dma::host::init_test_region();
    // 2. The controller: the model's BAR0 is what a kernel would map from the PCI function.
    //    (The first model finds the DMA region, before anything else allocates from it.)
    let f = FAKE.call_once(|| FakeCtrl::new(BLOCKS, BLOCK_SIZE));
    // The driver's bounded waits during bring-up step the model through its clock.
    f.install();
    // 3. The driver, interrupt mode (MSI-X style: no INTx masking).
    let cfg = Config {
        mode: Mode::Interrupt,
        intx: false,
        prefer_sgl: false,
        clock: fake::clock,
        queues: 1,
    };
    let hw = match Nvme::new(f.bar(), cfg) {
        Ok(n) => HW.call_once(|| n),
        Err(e) => panic!("bring-up failed: {e:?}"),
    };
    let info = *hw.info();
    println!(
        "nvme: vendor {:#06x}, {} blocks of {} bytes, mdts {} bytes, vwc {}",
        info.vendor, info.blocks, info.block_size, info.mdts_bytes, info.vwc
    );
    // 4. The block layer's queue on the driver, and the driver told where completions go.
    let mut qc = QueueConfig::new(info.capacity);
    qc.clock = fake::clock;
    qc.wait = Wait::Hook(wait);
    let queue = QUEUE.call_once(|| Queue::new(hw, hw.limits(), qc, &SPLIT_SET));
    hw.attach(queue);

    // 5. I/O buffers: DMA regions given up for good, which hand out bounds-checked segments.
    let len = 2 * SEG + 4096;
    let mut out = DmaRegion::from_dma_buf(DmaBuf::alloc(len, 4096).expect("DMA memory"));
    let mut back = DmaRegion::from_dma_buf(DmaBuf::alloc(len, 4096).expect("DMA memory"));
    let pattern = |i: usize| (i as u8).wrapping_mul(13) ^ (i >> 8) as u8 ^ 0xa5;
    for (i, b) in out.as_mut_slice().iter_mut().enumerate() {
        *b = pattern(i);
    }
    back.as_mut_slice().fill(0);

    let st = io(queue, Op::Write, &out);
    assert_eq!(st, Ok(()), "write");
    println!("wrote {} bytes at sector {SECTOR} (2 segments)", 2 * SEG);
    let st = io(queue, Op::Read, &back);
    assert_eq!(st, Ok(()), "read");
    println!("read {} bytes back", 2 * SEG);

    // 6. Check: what came back is what went out, and the model's disk holds it.
    for k in 0..2 {
        let at = k * (SEG + 4096);
        let sent = &out.as_slice()[at..at + SEG];
        assert_eq!(
            &back.as_slice()[at..at + SEG],
            sent,
            "segment {k} read back"
        );
        let disk_at = SECTOR as usize * 512 + k * SEG;
        assert_eq!(
            f.disk(disk_at, SEG),
            sent,
            "segment {k} on the model's disk"
        );
    }
    let s = hw.stats();
    let n = |c: &core::sync::atomic::AtomicU64| c.load(core::sync::atomic::Ordering::Relaxed);
    println!(
        "data matches; driver: {} requests, {} completions, {} errors, {} interrupts, {} PRP lists",
        n(&s.requests),
        n(&s.completions),
        n(&s.errors),
        n(&s.interrupts),
        n(&s.prp_lists)
    );
    assert_eq!(n(&s.errors), 0);
}

fn main() {
    run();
}

#[test]
fn host_disk() {
    run();
}
