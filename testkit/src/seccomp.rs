//! A container's seccomp profile, as far as io_uring goes: Docker (since 25) and containerd
//! refuse `io_uring_setup`, `io_uring_enter` and `io_uring_register` with EPERM in their
//! default profiles. [`refuse_io_uring`] installs that refusal in the calling process (for a
//! child, from `CommandExt::pre_exec`), so a test can start imgate as it would start in a
//! default container, with no container engine.

use std::io;

/// io_uring's three system calls, numbered alike on every architecture (they came after the
/// numbering was unified).
const IO_URING_SETUP: u32 = 425;
const IO_URING_REGISTER: u32 = 427;

const BPF_LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
const BPF_JGE_K: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
const BPF_JGT_K: u16 = (libc::BPF_JMP | libc::BPF_JGT | libc::BPF_K) as u16;
const BPF_RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
const SECCOMP_RET_ALLOW: u32 = 0x7fff_0000;
const SECCOMP_RET_ERRNO: u32 = 0x0005_0000;

fn statement(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// Makes every later io_uring system call of this process (and of what it executes) fail
/// with EPERM; everything else is allowed. Irreversible, as seccomp filters are. Only
/// async-signal-safe calls, so it may run between `fork` and `exec`.
pub fn refuse_io_uring() -> io::Result<()> {
    let program = [
        // The system call's number: the first field of `struct seccomp_data`.
        statement(BPF_LD_W_ABS, 0),
        // Below io_uring_setup: allowed (jump to the last instruction).
        jump(BPF_JGE_K, IO_URING_SETUP, 0, 2),
        // Above io_uring_register: allowed.
        jump(BPF_JGT_K, IO_URING_REGISTER, 1, 0),
        statement(BPF_RET_K, SECCOMP_RET_ERRNO | libc::EPERM as u32),
        statement(BPF_RET_K, SECCOMP_RET_ALLOW),
    ];
    let prog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: plain prctl calls; `prog` points at `program`, alive for the duration of the
    // call (the kernel copies the filter).
    unsafe {
        // Needed to install a filter without CAP_SYS_ADMIN, and harmless with it.
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(io::Error::last_os_error());
        }
        if libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &prog as *const libc::sock_fprog,
        ) != 0
        {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::CommandExt;
    use std::process::Command;

    /// A child under the filter (this test binary, started again) is refused io_uring with
    /// EPERM and can still do the rest.
    #[test]
    fn a_process_under_the_filter_is_refused_io_uring_and_nothing_else() {
        if std::env::var_os("IMGATE_SECCOMP_CHILD").is_some() {
            // SAFETY: io_uring_setup with a null params pointer: refused before it is read.
            let ret = unsafe { libc::syscall(super::IO_URING_SETUP as libc::c_long, 1, 0) };
            let errno = std::io::Error::last_os_error().raw_os_error();
            assert_eq!((ret, errno), (-1, Some(libc::EPERM)));
            // Something else still works.
            assert!(std::fs::read_dir("/proc/self/fd").is_ok());
            return;
        }
        let mut child = Command::new(std::env::current_exe().unwrap());
        child
            .args([
                "--exact",
                "seccomp::tests::a_process_under_the_filter_is_refused_io_uring_and_nothing_else",
            ])
            .env("IMGATE_SECCOMP_CHILD", "1");
        // SAFETY: refuse_io_uring makes only prctl calls, allowed between fork and exec.
        unsafe { child.pre_exec(super::refuse_io_uring) };
        let out = child.output().expect("the test binary starts again");
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        // Without the filter, the same call is not refused with EPERM (EFAULT: null params).
        // SAFETY: as above.
        let ret = unsafe { libc::syscall(super::IO_URING_SETUP as libc::c_long, 1, 0) };
        let errno = std::io::Error::last_os_error().raw_os_error();
        assert_eq!(ret, -1);
        assert_ne!(
            errno,
            Some(libc::EPERM),
            "io_uring refused without a filter"
        );
    }
}
