//! A shell on a pseudo-terminal, with non-blocking async access to the PTY master.
//!
//! Done with `openpty(3)` and a `pre_exec` hook (new session, controlling terminal)
//! rather than a PTY crate: it is a few system calls, and it keeps the child a
//! `tokio::process::Child` that is killed if the session is dropped.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;
use std::process::Stdio;

use tokio::io::unix::AsyncFd;
use tokio::process::{Child, Command};

/// A running shell and the master side of its terminal.
pub struct Pty {
    master: AsyncFd<OwnedFd>,
    pub child: Child,
}

fn winsize(cols: u16, rows: u16) -> libc::winsize {
    libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

impl Pty {
    /// Starts `shell` as a login shell on a new `cols`×`rows` terminal.
    pub fn spawn(shell: &Path, cols: u16, rows: u16) -> io::Result<Pty> {
        let (mut master, mut slave) = (-1, -1);
        let size = winsize(cols, rows);
        // SAFETY: openpty writes two descriptors into the given integers; the name
        // and termios pointers may be null.
        check(unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                &size,
            )
        })?;
        // SAFETY: openpty succeeded, so both are open descriptors we now own.
        let (master, slave) =
            unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
        // SAFETY: plain fcntl calls on a descriptor we own.
        unsafe {
            let flags = check(libc::fcntl(master.as_raw_fd(), libc::F_GETFL))?;
            check(libc::fcntl(
                master.as_raw_fd(),
                libc::F_SETFL,
                flags | libc::O_NONBLOCK,
            ))?;
            // The shell must not inherit the master side.
            check(libc::fcntl(
                master.as_raw_fd(),
                libc::F_SETFD,
                libc::FD_CLOEXEC,
            ))?;
        }
        let mut cmd = Command::new(shell);
        cmd.arg("-l")
            .env("TERM", "xterm-256color")
            .stdin(Stdio::from(slave.try_clone()?))
            .stdout(Stdio::from(slave.try_clone()?))
            .stderr(Stdio::from(slave))
            .kill_on_drop(true);
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                // A new session whose controlling terminal is the PTY, so that job
                // control and ^C reach the shell's foreground process group.
                check(libc::setsid())?;
                check(libc::ioctl(0, libc::TIOCSCTTY as _, 0))?;
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        // SAFETY: `OwnedFd` always returns the descriptor it owns, which stays open
        // until the `AsyncFd` (and with it the `OwnedFd`) is dropped.
        let master = unsafe { AsyncFd::register(master) }.map_err(|e| e.into_parts().1)?;
        Ok(Pty { master, child })
    }

    /// Tells the terminal (and so the shell, by SIGWINCH) its new size.
    pub fn resize(&self, cols: u16, rows: u16) -> io::Result<()> {
        let size = winsize(cols, rows);
        // SAFETY: TIOCSWINSZ reads a winsize from the pointer.
        check(unsafe { libc::ioctl(self.master.as_raw_fd(), libc::TIOCSWINSZ as _, &size) })?;
        Ok(())
    }

    /// Reads output; `Ok(0)` once the shell and everything it started have closed the
    /// terminal (Linux reports that as EIO on the master).
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.master.readable().await?;
            // SAFETY: read into a buffer we own, of the length we pass.
            let result = guard.try_io(|fd| {
                check(
                    unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) }
                        as libc::c_int,
                )
                .map(|n| n as usize)
            });
            match result {
                Ok(Ok(n)) => return Ok(n),
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Ok(0),
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }

    /// Writes all of `data` as terminal input.
    pub async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let mut guard = self.master.writable().await?;
            // SAFETY: write from a slice we hold, of its length.
            let result = guard.try_io(|fd| {
                check(
                    unsafe { libc::write(fd.as_raw_fd(), data.as_ptr().cast(), data.len()) }
                        as libc::c_int,
                )
                .map(|n| n as usize)
            });
            match result {
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }

    /// Hangs up: the shell's session gets SIGHUP, as when a terminal window closes.
    pub fn hang_up(&self) {
        if let Some(pid) = self.child.id() {
            // SAFETY: signalling the process group the shell leads (it called setsid).
            unsafe {
                libc::kill(-(pid as libc::pid_t), libc::SIGHUP);
            }
        }
    }
}
