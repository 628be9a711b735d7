//! Windows: paths instead of directory handles, directories created private to their
//! user (a protected DACL) but not inspected (owner and permissions are reported as
//! ours and private), process facts from `GetProcessTimes`/`GetExitCodeProcess`, and
//! auto-start by re-executing the current executable as a detached process whose stdin
//! carries the launch description and whose stdout carries the readiness report.

use std::ffi::OsStr;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, Write};
use std::os::windows::ffi::OsStrExt;
use std::os::windows::io::{AsRawHandle, FromRawHandle, IntoRawHandle, OwnedHandle};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use windows_sys::Win32::Foundation::{
    CloseHandle, FILETIME, HANDLE, HANDLE_FLAG_INHERIT, INVALID_HANDLE_VALUE, STILL_ACTIVE,
    SetHandleInformation,
};
use windows_sys::Win32::System::Console::{
    GetStdHandle, STD_ERROR_HANDLE, STD_HANDLE, STD_INPUT_HANDLE, STD_OUTPUT_HANDLE, SetStdHandle,
};
use windows_sys::Win32::System::Pipes::{CreatePipe, PeekNamedPipe};
use windows_sys::Win32::System::Threading::{
    CREATE_NEW_PROCESS_GROUP, CREATE_NO_WINDOW, CREATE_UNICODE_ENVIRONMENT, CreateProcessW,
    DETACHED_PROCESS, DeleteProcThreadAttributeList, EXTENDED_STARTUPINFO_PRESENT,
    GetExitCodeProcess, GetProcessTimes, INFINITE, InitializeProcThreadAttributeList, OpenProcess,
    PROC_THREAD_ATTRIBUTE_HANDLE_LIST, PROCESS_INFORMATION, PROCESS_QUERY_LIMITED_INFORMATION,
    PROCESS_TERMINATE, STARTF_USESTDHANDLES, STARTUPINFOEXW, TerminateProcess,
    UpdateProcThreadAttribute, WaitForSingleObject,
};

use super::{Access, FileKind, Handover, Inherited, Stat};

/// A directory, by path.
pub(crate) type DirHandle = PathBuf;

fn stat_of(metadata: &std::fs::Metadata) -> Stat {
    let kind = if metadata.file_type().is_symlink() {
        FileKind::Symlink
    } else if metadata.is_dir() {
        FileKind::Dir
    } else if metadata.is_file() {
        FileKind::File
    } else {
        FileKind::Other
    };
    // Reported private and ours: the ACLs are not inspected.
    let mode = if kind == FileKind::Dir { 0o700 } else { 0o600 };
    Stat {
        uid: euid(),
        mode,
        kind,
    }
}

pub(crate) fn euid() -> u32 {
    0
}

pub(crate) fn stat_dir(dir: &DirHandle) -> io::Result<Stat> {
    Ok(stat_of(&std::fs::metadata(dir)?))
}

pub(crate) fn stat_file(file: &File) -> io::Result<Stat> {
    Ok(stat_of(&file.metadata()?))
}

pub(crate) fn lstat(path: &Path) -> io::Result<Stat> {
    Ok(stat_of(&std::fs::symlink_metadata(path)?))
}

pub(crate) fn lstat_at(dir: &DirHandle, name: &str) -> io::Result<Stat> {
    lstat(&dir.join(name))
}

/// The root of `path` (a drive, say).
pub(crate) fn open_root(path: &Path) -> io::Result<DirHandle> {
    Ok(path.ancestors().last().unwrap_or(path).to_path_buf())
}

pub(crate) fn open_dir_at(dir: &DirHandle, name: &OsStr) -> io::Result<DirHandle> {
    Ok(dir.join(name))
}

pub(crate) fn open_workdir_at(dir: &DirHandle, name: &str) -> io::Result<DirHandle> {
    Ok(dir.join(name))
}

/// Creates the directory `name` inside `dir`, private to the current user (see
/// [`create_private_dir`]); one that exists already is fine.
pub(crate) fn mkdir_at(dir: &DirHandle, name: &str) -> io::Result<()> {
    match create_private_dir(&dir.join(name)) {
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        other => other,
    }
}

pub(crate) fn open_cwd() -> io::Result<DirHandle> {
    std::env::current_dir()
}

pub(crate) fn clone_handle(dir: &DirHandle) -> io::Result<DirHandle> {
    Ok(dir.clone())
}

pub(crate) fn open_at(dir: &DirHandle, file: &str, access: Access) -> io::Result<File> {
    let mut options = OpenOptions::new();
    match access {
        Access::Read => options.read(true),
        Access::Lock => options.read(true).write(true).create(true).truncate(false),
        Access::Append => options.append(true).create(true),
        Access::CreateNew => options.read(true).write(true).create_new(true),
    };
    options.open(dir.join(file))
}

pub(crate) fn rename_at(dir: &DirHandle, from: &str, to: &str) -> io::Result<()> {
    std::fs::rename(dir.join(from), dir.join(to))
}

pub(crate) fn remove_at(dir: &DirHandle, file: &str) -> io::Result<()> {
    std::fs::remove_file(dir.join(file))
}

/// Whether a process has exited, and when it was created (100 ns units since 1601);
/// `None` if there is no such process (or it cannot be inspected).
fn process_facts(pid: u32) -> Option<(bool, u64)> {
    let zero = FILETIME {
        dwLowDateTime: 0,
        dwHighDateTime: 0,
    };
    let (mut created, mut exited, mut kernel, mut user) = (zero, zero, zero, zero);
    let mut code = 0u32;
    // SAFETY: a handle opened here is closed here; the out-pointers are valid locals.
    let (times, status) = unsafe {
        let handle = OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, 0, pid);
        if handle.is_null() {
            return None;
        }
        let times = GetProcessTimes(handle, &mut created, &mut exited, &mut kernel, &mut user);
        let status = GetExitCodeProcess(handle, &mut code);
        CloseHandle(handle);
        (times, status)
    };
    if times == 0 {
        return None;
    }
    let start = (u64::from(created.dwHighDateTime) << 32) | u64::from(created.dwLowDateTime);
    Some((status != 0 && code != STILL_ACTIVE as u32, start))
}

/// The creation time of a live process, or `None` if no such process exists or it has
/// exited (an exited process whose handle someone still holds is not live).
pub(crate) fn process_start_time(pid: u32) -> Option<u64> {
    process_facts(pid)
        .filter(|&(exited, _)| !exited)
        .map(|(_, start)| start)
}

/// Whether a process has exited (or does not exist).
pub(crate) fn process_exited(pid: u32) -> bool {
    process_facts(pid).is_none_or(|(exited, _)| exited)
}

pub(crate) fn raise_fd_limit() {}

/// Terminates `pid` at once (the CLI's `stop` of a daemon that does not retire).
pub(crate) fn kill(pid: u32) -> io::Result<()> {
    // SAFETY: a handle opened here is closed here.
    unsafe {
        let handle = OpenProcess(PROCESS_TERMINATE, 0, pid);
        if handle.is_null() {
            return Err(io::Error::last_os_error());
        }
        let terminated = TerminateProcess(handle, 1);
        let error = io::Error::last_os_error();
        CloseHandle(handle);
        if terminated == 0 { Err(error) } else { Ok(()) }
    }
}

/// The launcher is the daemon itself: there is no fork to leave it by.
pub(crate) const LAUNCHER_IS_DAEMON: bool = true;

/// What the launcher reads the readiness report from: the daemon's stdout.
pub(crate) type ReadyPipe = File;

/// A spawned daemon process, by handle (std's `Child` cannot be made from one).
pub(crate) struct Launcher(OwnedHandle);

impl Launcher {
    /// Its exit code if it has exited.
    pub(crate) fn try_wait(&mut self) -> io::Result<Option<u32>> {
        let mut code = 0u32;
        // SAFETY: the handle is open; `code` is a valid local.
        if unsafe { GetExitCodeProcess(self.0.as_raw_handle() as HANDLE, &mut code) } == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((code != STILL_ACTIVE as u32).then_some(code))
    }

    pub(crate) fn kill(&mut self) -> io::Result<()> {
        // SAFETY: the handle is open and has PROCESS_TERMINATE access (its creator's).
        if unsafe { TerminateProcess(self.0.as_raw_handle() as HANDLE, 1) } == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    pub(crate) fn wait(&mut self) -> io::Result<()> {
        // SAFETY: the handle is open.
        unsafe { WaitForSingleObject(self.0.as_raw_handle() as HANDLE, INFINITE) };
        Ok(())
    }
}

/// Marks a handle inheritable (to be listed in a child's handle list).
fn inheritable(handle: &impl AsRawHandle) -> io::Result<()> {
    // SAFETY: the handle is open for the duration of the borrow.
    let set = unsafe {
        SetHandleInformation(
            handle.as_raw_handle() as HANDLE,
            HANDLE_FLAG_INHERIT,
            HANDLE_FLAG_INHERIT,
        )
    };
    if set == 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// An anonymous pipe: (read end, write end), neither inheritable.
fn pipe() -> io::Result<(File, File)> {
    let (mut read, mut write): (HANDLE, HANDLE) = (std::ptr::null_mut(), std::ptr::null_mut());
    // SAFETY: the out-pointers are valid locals; the handles are then owned by Files.
    unsafe {
        if CreatePipe(&mut read, &mut write, std::ptr::null(), 0) == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((
            File::from_raw_handle(read as _),
            File::from_raw_handle(write as _),
        ))
    }
}

/// A NUL-terminated UTF-16 string.
fn wide(text: &OsStr) -> Vec<u16> {
    text.encode_wide().chain([0]).collect()
}

/// The environment block `command` gives its child: ours with its changes, sorted by
/// name (case-insensitively, as Windows compares names), as `CreateProcessW` wants it.
fn environment_block(command: &Command) -> Vec<u16> {
    let mut variables: std::collections::BTreeMap<
        String,
        (std::ffi::OsString, std::ffi::OsString),
    > = std::env::vars_os()
        .map(|(name, value)| (name.to_string_lossy().to_uppercase(), (name, value)))
        .collect();
    for (name, value) in command.get_envs() {
        let key = name.to_string_lossy().to_uppercase();
        match value {
            Some(value) => variables.insert(key, (name.to_os_string(), value.to_os_string())),
            None => variables.remove(&key),
        };
    }
    let mut block = Vec::new();
    for (name, value) in variables.values() {
        block.extend(name.encode_wide());
        block.push(u16::from(b'='));
        block.extend(value.encode_wide());
        block.push(0);
    }
    block.push(0);
    block
}

/// Creates `command`'s program as a detached process (no console, its own process
/// group, so that a console's Ctrl-C does not reach it) in the runtime directory, with
/// no arguments, its stdin and stdout pipes to us and its stderr on `NUL`; returns it
/// and the read end of its stdout, which carries the readiness report. The launch
/// description is written to its stdin by a helper thread (a program that never reads
/// it only blocks that thread, until it is stopped at the start timeout).
///
/// The child inherits exactly these three handles, listed with
/// `PROC_THREAD_ATTRIBUTE_HANDLE_LIST`: std's `Command` would hand it every inheritable
/// handle of this process, among them the stdio pipes this process itself inherited,
/// and a daemon holding its client's stdout would keep whoever reads that waiting for
/// EOF.
///
/// The start lock is not handed over: a byte-range lock belongs to the process that
/// took it, so the client keeps holding it until the daemon reports, and stops a
/// daemon that did not report in time (see [`LAUNCHER_IS_DAEMON`]).
pub(crate) fn spawn_with(
    command: &mut Command,
    _title: &str,
    handover: Handover,
) -> io::Result<(Launcher, ReadyPipe)> {
    let Handover {
        start_lock,
        launch,
        workdir,
    } = handover;
    drop(start_lock);
    let launch = read_from_start(&launch)?;
    let (stdin_read, mut stdin_write) = pipe()?;
    let (stdout_read, stdout_write) = pipe()?;
    let null = OpenOptions::new().write(true).open("NUL")?;
    for handle in [&stdin_read, &stdout_write, &null] {
        inheritable(handle)?;
    }
    let mut handles: [HANDLE; 3] = [
        stdin_read.as_raw_handle() as HANDLE,
        stdout_write.as_raw_handle() as HANDLE,
        null.as_raw_handle() as HANDLE,
    ];

    let program = command.get_program();
    // The program alone, quoted: a path cannot contain '"'.
    let mut command_line = wide(&{
        let mut line = std::ffi::OsString::from("\"");
        line.push(program);
        line.push("\"");
        line
    });
    let environment = environment_block(command);
    let directory = wide(workdir.as_os_str());
    let program = wide(program);

    let mut size = 0usize;
    // SAFETY: the first call only reports the size the attribute list needs.
    unsafe { InitializeProcThreadAttributeList(std::ptr::null_mut(), 1, 0, &mut size) };
    let mut attributes = vec![0u64; size.div_ceil(8)];
    let list = attributes.as_mut_ptr().cast();
    // SAFETY: `list` has `size` bytes, 8-aligned; `handles` outlives the list, which is
    // deleted below before either is dropped.
    unsafe {
        if InitializeProcThreadAttributeList(list, 1, 0, &mut size) == 0 {
            return Err(io::Error::last_os_error());
        }
        if UpdateProcThreadAttribute(
            list,
            0,
            PROC_THREAD_ATTRIBUTE_HANDLE_LIST as usize,
            handles.as_mut_ptr().cast(),
            std::mem::size_of_val(&handles),
            std::ptr::null_mut(),
            std::ptr::null(),
        ) == 0
        {
            let error = io::Error::last_os_error();
            DeleteProcThreadAttributeList(list);
            return Err(error);
        }
    }
    // SAFETY: STARTUPINFOEXW and PROCESS_INFORMATION are plain old data.
    let mut startup: STARTUPINFOEXW = unsafe { std::mem::zeroed() };
    startup.StartupInfo.cb = std::mem::size_of::<STARTUPINFOEXW>() as u32;
    startup.StartupInfo.dwFlags = STARTF_USESTDHANDLES;
    startup.StartupInfo.hStdInput = handles[0];
    startup.StartupInfo.hStdOutput = handles[1];
    startup.StartupInfo.hStdError = handles[2];
    startup.lpAttributeList = list;
    // SAFETY: as above.
    let mut created: PROCESS_INFORMATION = unsafe { std::mem::zeroed() };
    // SAFETY: every string is NUL-terminated (the environment block doubly) and lives
    // until the call returns; the command line is writable as CreateProcessW requires.
    let ok = unsafe {
        let ok = CreateProcessW(
            program.as_ptr(),
            command_line.as_mut_ptr(),
            std::ptr::null(),
            std::ptr::null(),
            1,
            DETACHED_PROCESS
                | CREATE_NEW_PROCESS_GROUP
                | CREATE_NO_WINDOW
                | CREATE_UNICODE_ENVIRONMENT
                | EXTENDED_STARTUPINFO_PRESENT,
            environment.as_ptr().cast(),
            directory.as_ptr(),
            &startup.StartupInfo,
            &mut created,
        );
        DeleteProcThreadAttributeList(list);
        ok
    };
    if ok == 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: CreateProcessW gave us both handles, owned by nobody else.
    let process = unsafe {
        CloseHandle(created.hThread);
        OwnedHandle::from_raw_handle(created.hProcess as _)
    };
    // The child's ends are its own now: ours must close, or EOF would never come.
    drop((stdin_read, stdout_write, null));
    std::thread::Builder::new()
        .name("loopback-singleton launch".into())
        .spawn(move || {
            // A daemon that died first closed its end: the readiness read says so.
            let _ = stdin_write.write_all(&launch);
        })?;
    Ok((Launcher(process), stdout_read))
}

/// Waits until `pipe` has something to read (or its writer closed it); `false` when
/// `timeout` passed first. Anonymous pipes cannot be waited on, so this polls
/// `PeekNamedPipe` with a pause that grows to 10 ms.
pub(crate) fn wait_readable(pipe: &ReadyPipe, timeout: Duration) -> io::Result<bool> {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        let mut available = 0u32;
        // SAFETY: the handle is open for the duration of the borrow; no buffer is read.
        let peeked = unsafe {
            PeekNamedPipe(
                pipe.as_raw_handle() as HANDLE,
                std::ptr::null_mut(),
                0,
                std::ptr::null_mut(),
                &mut available,
                std::ptr::null_mut(),
            )
        };
        // A failure is a closed pipe (the daemon died): the read reports it.
        if peeked == 0 || available > 0 {
            return Ok(true);
        }
        let now = Instant::now();
        if now >= deadline {
            return Ok(false);
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(10));
    }
}

/// Takes a standard handle over and leaves nothing in its place (std then treats that
/// stream as closed), so that no later print can reach the handle once it is closed.
fn take_std_handle(which: STD_HANDLE) -> Option<File> {
    // SAFETY: called before main, while single-threaded; the handle the launcher gave
    // us is owned by nothing else in this fresh process.
    unsafe {
        let handle = GetStdHandle(which);
        if handle.is_null() || handle == INVALID_HANDLE_VALUE {
            return None;
        }
        SetStdHandle(which, std::ptr::null_mut());
        Some(File::from_raw_handle(handle as _))
    }
}

/// What the launcher handed over (see [`spawn_with`]): the launch description on
/// stdin, the readiness pipe on stdout. The start lock stays with the launcher.
pub(crate) fn take_inherited() -> Inherited {
    Inherited {
        ready: take_std_handle(STD_OUTPUT_HANDLE),
        start_lock: None,
        launch: take_std_handle(STD_INPUT_HANDLE),
    }
}

/// The whole content of `file` from its first byte: a file written by this process
/// (its offset at the end), or the stdin pipe (nothing to seek, hence the ignored
/// error).
pub(crate) fn read_from_start(mut file: &File) -> io::Result<Vec<u8>> {
    let _ = file.seek(io::SeekFrom::Start(0));
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Nothing to leave: the process was created detached, without a console.
pub(crate) fn detach() -> io::Result<()> {
    Ok(())
}

/// Makes stdout and stderr the write end of a pipe whose read end `reader` takes (a
/// thread that drains it into the capped log), for the rest of the process's life; if
/// there is no pipe or `reader` fails, they stay as they are (none, in a spawned
/// daemon: see [`take_inherited`]).
pub(crate) fn daemon_stdio(reader: impl FnOnce(File) -> io::Result<()>) {
    let Ok((read, write)) = pipe() else {
        return;
    };
    let Ok(copy) = write.try_clone() else {
        return;
    };
    if reader(read).is_ok() {
        // SAFETY: the handles are ours and stay open for the life of the process.
        unsafe {
            SetStdHandle(STD_ERROR_HANDLE, copy.into_raw_handle() as HANDLE);
            SetStdHandle(STD_OUTPUT_HANDLE, write.into_raw_handle() as HANDLE);
        }
    }
}

/// Points stdout and stderr at `NUL` and closes what they were (such as the write end of
/// [`daemon_stdio`]'s pipe). Best effort. (std looks the standard handles up on every
/// write, so later prints go to `NUL`.)
pub(crate) fn release_stdio() {
    let Ok(null) = OpenOptions::new().write(true).open("NUL") else {
        return;
    };
    let Ok(copy) = null.try_clone() else {
        return;
    };
    for (which, replacement) in [(STD_OUTPUT_HANDLE, null), (STD_ERROR_HANDLE, copy)] {
        // SAFETY: the replacement handle is ours and stays open for the life of the
        // process; the old one was set by `daemon_stdio` (or inherited) and is closed
        // once nothing names it any more.
        unsafe {
            let old = GetStdHandle(which);
            SetStdHandle(which, replacement.into_raw_handle() as HANDLE);
            if !old.is_null() && old != INVALID_HANDLE_VALUE {
                CloseHandle(old);
            }
        }
    }
}

/// The console's Ctrl-C, Ctrl-Break, close, logoff and shutdown events (tokio registers
/// the handler with `SetConsoleCtrlHandler`): what SIGINT and SIGTERM are on Unix.
pub(crate) struct StopSignals(Option<ConsoleEvents>);

struct ConsoleEvents {
    c: tokio::signal::windows::CtrlC,
    brk: tokio::signal::windows::CtrlBreak,
    close: tokio::signal::windows::CtrlClose,
    logoff: tokio::signal::windows::CtrlLogoff,
    shutdown: tokio::signal::windows::CtrlShutdown,
}

impl StopSignals {
    /// What the host logs when one arrives.
    pub(crate) const DESCRIPTION: &str =
        "a console Ctrl-C, Ctrl-Break, close, logoff or shutdown event";

    /// Starts listening (inside a tokio runtime).
    pub(crate) fn listen() -> Self {
        use tokio::signal::windows::*;
        let events = || -> io::Result<ConsoleEvents> {
            Ok(ConsoleEvents {
                c: ctrl_c()?,
                brk: ctrl_break()?,
                close: ctrl_close()?,
                logoff: ctrl_logoff()?,
                shutdown: ctrl_shutdown()?,
            })
        };
        StopSignals(events().ok())
    }

    /// Completes when one arrives (never, if listening failed).
    pub(crate) async fn recv(&mut self) {
        if let Some(events) = &mut self.0 {
            tokio::select! {
                _ = events.c.recv() => return,
                _ = events.brk.recv() => return,
                _ = events.close.recv() => return,
                _ = events.logoff.recv() => return,
                _ = events.shutdown.recv() => return,
            }
        }
        std::future::pending().await
    }
}

/// Creates `path` and any missing parents, private to the current user for those it
/// creates (what mode 0700 is on Unix).
pub(crate) fn create_dir_all_private(path: &Path) -> io::Result<()> {
    let missing: Vec<&Path> = path
        .ancestors()
        .take_while(|dir| !dir.as_os_str().is_empty() && !dir.exists())
        .collect();
    for dir in missing.into_iter().rev() {
        match create_private_dir(dir) {
            Err(error) if error.kind() != io::ErrorKind::AlreadyExists => return Err(error),
            _ => {}
        }
    }
    Ok(())
}

/// Creates the directory `path` with a protected DACL (nothing inherited from above)
/// granting full control to the current user alone, inherited by everything created
/// inside it: `D:P(A;OICI;FA;;;<user SID>)`.
fn create_private_dir(path: &Path) -> io::Result<()> {
    use windows_sys::Win32::Security::Authorization::{
        ConvertStringSecurityDescriptorToSecurityDescriptorW, SDDL_REVISION_1,
    };
    use windows_sys::Win32::Security::{PSECURITY_DESCRIPTOR, SECURITY_ATTRIBUTES};
    use windows_sys::Win32::Storage::FileSystem::CreateDirectoryW;

    let sddl = format!("D:P(A;OICI;FA;;;{})", current_user_sid()?);
    let sddl = wide(OsStr::new(&sddl));
    let mut descriptor: PSECURITY_DESCRIPTOR = std::ptr::null_mut();
    // SAFETY: `sddl` is NUL-terminated; the descriptor the call allocates is freed
    // below with LocalFree, after its last use.
    unsafe {
        if ConvertStringSecurityDescriptorToSecurityDescriptorW(
            sddl.as_ptr(),
            SDDL_REVISION_1,
            &mut descriptor,
            std::ptr::null_mut(),
        ) == 0
        {
            return Err(io::Error::last_os_error());
        }
        let attributes = SECURITY_ATTRIBUTES {
            nLength: std::mem::size_of::<SECURITY_ATTRIBUTES>() as u32,
            lpSecurityDescriptor: descriptor,
            bInheritHandle: 0,
        };
        let created = CreateDirectoryW(wide(path.as_os_str()).as_ptr(), &attributes);
        let error = io::Error::last_os_error();
        windows_sys::Win32::Foundation::LocalFree(descriptor);
        if created == 0 { Err(error) } else { Ok(()) }
    }
}

/// The current user's SID as a string (`S-1-5-21-...`), from this process's token.
fn current_user_sid() -> io::Result<String> {
    use windows_sys::Win32::Security::Authorization::ConvertSidToStringSidW;
    use windows_sys::Win32::Security::{GetTokenInformation, TOKEN_QUERY, TOKEN_USER, TokenUser};
    use windows_sys::Win32::System::Threading::{GetCurrentProcess, OpenProcessToken};

    // SAFETY: the token handle opened here is closed here; the buffer is 8-aligned and
    // as large as the first call asked for; the string the conversion allocates is
    // copied, then freed with LocalFree.
    unsafe {
        let mut token: HANDLE = std::ptr::null_mut();
        if OpenProcessToken(GetCurrentProcess(), TOKEN_QUERY, &mut token) == 0 {
            return Err(io::Error::last_os_error());
        }
        let token = OwnedHandle::from_raw_handle(token as _);
        let mut size = 0u32;
        GetTokenInformation(
            token.as_raw_handle() as HANDLE,
            TokenUser,
            std::ptr::null_mut(),
            0,
            &mut size,
        );
        let mut buffer = vec![0u64; (size as usize).div_ceil(8)];
        if GetTokenInformation(
            token.as_raw_handle() as HANDLE,
            TokenUser,
            buffer.as_mut_ptr().cast(),
            size,
            &mut size,
        ) == 0
        {
            return Err(io::Error::last_os_error());
        }
        let user = &*buffer.as_ptr().cast::<TOKEN_USER>();
        let mut string: windows_sys::core::PWSTR = std::ptr::null_mut();
        if ConvertSidToStringSidW(user.User.Sid, &mut string) == 0 {
            return Err(io::Error::last_os_error());
        }
        let len = (0..).take_while(|&i| *string.add(i) != 0).count();
        let sid = String::from_utf16_lossy(std::slice::from_raw_parts(string, len));
        windows_sys::Win32::Foundation::LocalFree(string.cast());
        Ok(sid)
    }
}

/// The platform's own per-user directory for runtime state: `%LOCALAPPDATA%`, private
/// to its user by default ACLs.
pub(crate) fn platform_runtime_base() -> Option<PathBuf> {
    std::env::var_os("LOCALAPPDATA")
        .filter(|value| !value.is_empty())
        .map(PathBuf::from)
}
