//! Traps and timer.

use crate::arch;

ktest! {
    fn breakpoint_is_handled_and_resumed() -> TestResult {
        let before = arch::breakpoint_count();
        arch::breakpoint();
        arch::breakpoint();
        check_eq!(arch::breakpoint_count(), before + 2);
        Ok(())
    }
}

ktest! {
    fn timer_interrupts_are_counted() -> TestResult {
        check!(arch::interrupts_enabled(), "interrupts are on while tests run");
        let start_ticks = arch::timer_ticks();
        let start = arch::now_ns();
        // Ten ticks at 100 Hz is 100 ms; allow a slow emulator five seconds.
        while arch::timer_ticks() < start_ticks + 10 {
            check!(arch::now_ns() - start < 5_000_000_000, "timer did not tick 10 times in 5 s");
            arch::wait_for_interrupt();
        }
        let elapsed = arch::now_ns() - start;
        // The ticks and the clock must agree roughly: 10 ticks cannot take less than 50 ms.
        check!(elapsed >= 50_000_000, "10 ticks in {} ns: timer or clock is off", elapsed);
        Ok(())
    }
}

ktest! {
    fn clock_is_monotonic() -> TestResult {
        let mut last = arch::now_ns();
        for _ in 0..1000 {
            let now = arch::now_ns();
            check!(now >= last, "clock went back from {} to {}", last, now);
            last = now;
        }
        let c0 = arch::cycles();
        let c1 = arch::cycles();
        check!(c1 >= c0, "cycle counter went back");
        Ok(())
    }
}

ktest! {
    fn crc32c_uses_the_instruction_the_cpu_has_and_agrees_with_software() -> TestResult {
        use tinyfs::crc::{accelerated, crc32c, crc32c_soft};
        check_eq!(accelerated(), arch::crc_instruction());
        let mut buf = [0u8; 4096 + 16];
        let mut x = arch::cycles() | 1;
        for b in buf.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        check_eq!(crc32c(b"123456789"), 0xE306_9283);
        for lo in 0..16 {
            for len in (0..=100).chain([511, 512, 4095, 4096]) {
                let d = &buf[lo..lo + len];
                check!(crc32c(d) == crc32c_soft(d), "CRC32C of {} bytes at {} differs", len, lo);
            }
        }
        Ok(())
    }
}

#[cfg(target_arch = "x86_64")]
ktest! {
    fn madt_interrupt_source_overrides_are_honoured() -> TestResult {
        // QEMU's MADT (PC and q35) moves ISA IRQ 0 to GSI 2 and makes IRQ 9 (the ACPI SCI)
        // level-triggered, active high; the other ISA IRQs keep GSI = IRQ, edge, active high.
        let first = arch::isa_irq(1).map(|(line, _, _)| line - 1);
        let Some(first) = first else {
            return Err(crate::ktest::fail(format_args!("ISA IRQ 1 has no IOAPIC line")));
        };
        check_eq!(arch::isa_irq(0), Some((first + 2, false, false)));
        check_eq!(arch::isa_irq(1), Some((first + 1, false, false)));
        check_eq!(arch::isa_irq(4), Some((first + 4, false, false)));
        check_eq!(arch::isa_irq(9), Some((first + 9, true, false)));
        check_eq!(arch::isa_irq(16), None);
        Ok(())
    }
}
