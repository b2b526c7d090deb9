//! Does hardware virtualization work on this host? Answered by running guest code, not by opening
//! `/dev/kvm`: on some hosts the device opens, `KVM_CREATE_VM` succeeds and guests still hang. The
//! probe builds a one-page real-mode guest (`mov al, 0x42; out 0x10, al; hlt`), runs it on a thread
//! and waits for the two exits it must produce. A vCPU that does not exit in time is kicked out of
//! `KVM_RUN` with a signal, so a hung probe never leaves a spinning thread behind.

use std::sync::mpsc;
use std::time::Duration;

use kvm_ioctls::{Kvm, VcpuExit};

/// What the probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvmProbe {
    /// Guest code ran to its `hlt`.
    Works,
    /// Why KVM is not usable here, in words for the log and the Node's conditions.
    Unusable(String),
}

impl KvmProbe {
    pub fn works(&self) -> bool {
        matches!(self, KvmProbe::Works)
    }
}

const GUEST_ADDR: u64 = 0x1000;
/// Guest memory: 2 MiB from address 0, identity-mapped by one large page.
const GUEST_MEMORY: usize = 0x20_0000;
const PML4_ADDR: u64 = 0x9000;
const PDPT_ADDR: u64 = 0xa000;
const PD_ADDR: u64 = 0xb000;
const PROBE_PORT: u16 = 0x10;
const PROBE_BYTE: u8 = 0x42;
/// mov al, 0x42 ; out 0x10, al ; hlt
const GUEST_CODE: [u8; 5] = [0xb0, PROBE_BYTE, 0xe6, PROBE_PORT as u8, 0xf4];

/// Signal used to interrupt a vCPU stuck in `KVM_RUN`; its handler does nothing, so the only
/// effect is the `EINTR` that makes the ioctl return.
fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN() + 2
}

extern "C" fn ignore_signal(_: libc::c_int) {}

fn install_kick_handler() -> Result<(), String> {
    // SAFETY: installs a handler that does nothing (async-signal-safe) for a real-time signal that
    // nothing else in this process uses; no SA_RESTART, so KVM_RUN returns EINTR.
    unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = ignore_signal as *const () as usize;
        libc::sigemptyset(&mut action.sa_mask);
        if libc::sigaction(kick_signal(), &action, std::ptr::null_mut()) != 0 {
            return Err(format!("sigaction: {}", std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// Runs the probe with the given deadline for the guest to reach its `hlt`.
pub fn probe_kvm(timeout: Duration) -> KvmProbe {
    let kvm = match Kvm::new() {
        Ok(kvm) => kvm,
        Err(e) => return KvmProbe::Unusable(format!("cannot open /dev/kvm: {e}")),
    };
    if let Err(e) = install_kick_handler() {
        return KvmProbe::Unusable(e);
    }
    let (tx, rx) = mpsc::channel();
    let (tid_tx, tid_rx) = mpsc::channel();
    let worker = std::thread::Builder::new().name("kvm-probe".into()).spawn(move || {
        // SAFETY: pthread_self has no preconditions.
        let _ = tid_tx.send(unsafe { libc::pthread_self() });
        let _ = tx.send(run_guest(&kvm));
    });
    let worker = match worker {
        Ok(handle) => handle,
        Err(e) => return KvmProbe::Unusable(format!("cannot start probe thread: {e}")),
    };
    let result = match rx.recv_timeout(timeout) {
        Ok(result) => result,
        Err(_) => {
            if let Ok(thread) = tid_rx.recv() {
                // Kick until the thread leaves KVM_RUN: a signal that arrives just before the ioctl
                // is entered would otherwise be missed.
                for _ in 0..50 {
                    // SAFETY: the thread is alive until `worker` is joined below.
                    unsafe { libc::pthread_kill(thread, kick_signal()) };
                    if rx.recv_timeout(Duration::from_millis(20)).is_ok() {
                        break;
                    }
                }
            }
            Err(format!("a KVM guest did not reach its first instruction's exit within {timeout:?}"))
        }
    };
    let _ = worker.join();
    match result {
        Ok(()) => match missing_baseline_features(&kvm_for_cpuid()) {
            missing if missing.is_empty() => KvmProbe::Works,
            missing => KvmProbe::Unusable(format!(
                "KVM runs guest code but offers guests no {}, which every QEMU x86-64 CPU model \
                 needs (real guests hang on such hosts)",
                missing.join(", ")
            )),
        },
        Err(why) => KvmProbe::Unusable(why),
    }
}

fn kvm_for_cpuid() -> Vec<kvm_bindings::kvm_cpuid_entry2> {
    Kvm::new()
        .and_then(|kvm| kvm.get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES))
        .map(|cpuid| cpuid.as_slice().to_vec())
        .unwrap_or_default()
}

/// (leaf, register, bit, name) of the features QEMU's baseline `qemu64` model asks for.
const BASELINE: &[(u32, char, u32, &str)] = &[
    (1, 'd', 0, "fpu"),
    (1, 'd', 4, "tsc"),
    (1, 'd', 6, "pae"),
    (1, 'd', 8, "cx8"),
    (1, 'd', 9, "apic"),
    (1, 'd', 15, "cmov"),
    (1, 'd', 23, "mmx"),
    (1, 'd', 24, "fxsr"),
    (1, 'd', 25, "sse"),
    (1, 'd', 26, "sse2"),
    (1, 'c', 0, "sse3"),
    (0x8000_0001, 'd', 29, "lm"),
];

/// The baseline features KVM's supported CPUID lacks.
pub fn missing_baseline_features(cpuid: &[kvm_bindings::kvm_cpuid_entry2]) -> Vec<&'static str> {
    BASELINE
        .iter()
        .filter(|(leaf, register, bit, _)| {
            let value = cpuid.iter().find(|e| e.function == *leaf && e.index == 0).map(|e| match register {
                'c' => e.ecx,
                _ => e.edx,
            });
            value.is_none_or(|v| v & (1 << bit) == 0)
        })
        .map(|(_, _, _, name)| *name)
        .collect()
}

fn run_guest(kvm: &Kvm) -> Result<(), String> {
    let vm = kvm.create_vm().map_err(|e| format!("KVM_CREATE_VM: {e}"))?;
    let size = GUEST_MEMORY;
    // SAFETY: an anonymous private mapping, unmapped below after the VM is dropped.
    let memory = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_ANONYMOUS | libc::MAP_PRIVATE | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if memory == libc::MAP_FAILED {
        return Err(format!("mmap: {}", std::io::Error::last_os_error()));
    }
    let outcome = run_in_memory(&vm, memory as *mut u8, size);
    drop(vm);
    // SAFETY: `memory` came from the mmap above and the VM that referenced it is gone.
    unsafe { libc::munmap(memory, size) };
    outcome
}

fn run_in_memory(vm: &kvm_ioctls::VmFd, memory: *mut u8, size: usize) -> Result<(), String> {
    // SAFETY: `memory` is a fresh mapping of `size` bytes; every write below is inside it.
    unsafe {
        std::ptr::copy_nonoverlapping(GUEST_CODE.as_ptr(), memory.add(GUEST_ADDR as usize), GUEST_CODE.len());
        write_u64(memory, PML4_ADDR, PDPT_ADDR | 0x3);
        write_u64(memory, PDPT_ADDR, PD_ADDR | 0x3);
        // Present, writable, 2 MiB page at 0.
        write_u64(memory, PD_ADDR, 0x83);
    }
    let region = kvm_bindings::kvm_userspace_memory_region {
        slot: 0,
        guest_phys_addr: 0,
        memory_size: size as u64,
        userspace_addr: memory as u64,
        flags: 0,
    };
    // SAFETY: the region stays mapped for the lifetime of the VM (unmapped only after drop).
    unsafe { vm.set_user_memory_region(region) }.map_err(|e| format!("KVM_SET_USER_MEMORY_REGION: {e}"))?;
    let mut vcpu = vm.create_vcpu(0).map_err(|e| format!("KVM_CREATE_VCPU: {e}"))?;
    // Long mode with paging: the hosts this probe exists for run real-mode code fine and hang
    // only once a guest kernel leaves it.
    let mut sregs = vcpu.get_sregs().map_err(|e| format!("KVM_GET_SREGS: {e}"))?;
    let code = kvm_bindings::kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector: 0x8,
        type_: 0xb,
        present: 1,
        dpl: 0,
        db: 0,
        s: 1,
        l: 1,
        g: 1,
        ..Default::default()
    };
    let data = kvm_bindings::kvm_segment { selector: 0x10, type_: 0x3, l: 0, db: 1, ..code };
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.cr3 = PML4_ADDR;
    sregs.cr4 |= 1 << 5; // PAE
    sregs.cr0 |= 1 | (1 << 31); // PE, PG
    sregs.efer |= (1 << 8) | (1 << 10); // LME, LMA
    vcpu.set_sregs(&sregs).map_err(|e| format!("KVM_SET_SREGS: {e}"))?;
    let mut regs = vcpu.get_regs().map_err(|e| format!("KVM_GET_REGS: {e}"))?;
    regs.rip = GUEST_ADDR;
    regs.rflags = 2;
    regs.rsp = 0x8000;
    vcpu.set_regs(&regs).map_err(|e| format!("KVM_SET_REGS: {e}"))?;
    let mut saw_out = false;
    loop {
        match vcpu.run() {
            Ok(VcpuExit::IoOut(port, data)) if port == PROBE_PORT && data.first() == Some(&PROBE_BYTE) => {
                saw_out = true
            }
            Ok(VcpuExit::Hlt) if saw_out => return Ok(()),
            Ok(other) => return Err(format!("the probe guest exited unexpectedly: {other:?}")),
            Err(e) if e.errno() == libc::EINTR => return Err("the probe guest was interrupted".into()),
            Err(e) => return Err(format!("KVM_RUN: {e}")),
        }
    }
}

/// # Safety
/// `base + offset .. + 8` must lie inside one writable mapping.
unsafe fn write_u64(base: *mut u8, offset: u64, value: u64) {
    std::ptr::write_unaligned(base.add(offset as usize) as *mut u64, value);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn baseline_check_names_what_is_missing() {
        let mut leaf1 =
            kvm_bindings::kvm_cpuid_entry2 { function: 1, edx: u32::MAX, ecx: 0x8120_2000, ..Default::default() };
        let ext = kvm_bindings::kvm_cpuid_entry2 { function: 0x8000_0001, edx: 1 << 29, ..Default::default() };
        assert_eq!(missing_baseline_features(&[leaf1, ext]), vec!["sse3"]);
        leaf1.ecx |= 1;
        assert!(missing_baseline_features(&[leaf1, ext]).is_empty());
        assert_eq!(missing_baseline_features(&[leaf1]), vec!["lm"]);
    }

    #[test]
    fn probe_answers_within_its_deadline() {
        let started = std::time::Instant::now();
        let result = probe_kvm(Duration::from_secs(2));
        eprintln!("probe: {result:?}");
        // Either answer is legitimate on some host; what matters is that it comes back.
        assert!(started.elapsed() < Duration::from_secs(5), "{result:?}");
    }
}
