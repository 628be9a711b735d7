//! Windows: paths instead of directory handles, directories and files created private
//! to their user (a protected DACL) and inspected through their owner and DACL, read as
//! the uid and mode a Unix stat would give (see [`security_of`]), process facts from
//! `GetProcessTimes`/`GetExitCodeProcess`, and auto-start by re-executing the current
//! executable as a detached process whose stdin carries the launch description and
//! whose stdout carries the readiness report.

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

fn kind_of(metadata: &std::fs::Metadata) -> FileKind {
    if metadata.file_type().is_symlink() {
        FileKind::Symlink
    } else if metadata.is_dir() {
        FileKind::Dir
    } else if metadata.is_file() {
        FileKind::File
    } else {
        FileKind::Other
    }
}

/// What `runtime_dir` reads from a Unix stat, from the object's owner and DACL (see
/// [`security_of`]).
fn stat_of(metadata: &std::fs::Metadata, handle: &impl AsRawHandle) -> io::Result<Stat> {
    let kind = kind_of(metadata);
    let (uid, mode) = security_of(handle.as_raw_handle() as HANDLE, kind == FileKind::Dir)?;
    Ok(Stat { uid, mode, kind })
}

/// Opens `path` for reading its security descriptor and attributes only (a directory
/// too; with `follow` false, a symbolic link or junction itself rather than its
/// target).
fn open_for_security(path: &Path, follow: bool) -> io::Result<File> {
    use std::os::windows::fs::OpenOptionsExt;
    use windows_sys::Win32::Storage::FileSystem::{
        FILE_FLAG_BACKUP_SEMANTICS, FILE_FLAG_OPEN_REPARSE_POINT, FILE_READ_ATTRIBUTES,
        READ_CONTROL,
    };
    let flags = FILE_FLAG_BACKUP_SEMANTICS
        | if follow {
            0
        } else {
            FILE_FLAG_OPEN_REPARSE_POINT
        };
    OpenOptions::new()
        .access_mode(READ_CONTROL | FILE_READ_ATTRIBUTES)
        .custom_flags(flags)
        .open(path)
}

/// The uid that stands for the current user: the last sub-authority (the RID) of its
/// SID, so that messages show a number that means something; never 0 (root's).
pub(crate) fn euid() -> u32 {
    identity().map_or(u32::MAX - 1, |identity| identity.uid)
}

/// Who this process is, as the owner and DACL checks need it (looked up once).
struct Identity {
    /// The token's user, `S-1-5-21-...`.
    user: String,
    /// The token's default owner of what it creates: the user, or for an elevated
    /// administrator `BUILTIN\Administrators` (S-1-5-32-544).
    default_owner: String,
    uid: u32,
}

fn identity() -> Option<&'static Identity> {
    static IDENTITY: std::sync::OnceLock<Option<Identity>> = std::sync::OnceLock::new();
    IDENTITY
        .get_or_init(|| {
            let user = token_sid(TokenSid::User).ok()?;
            let default_owner = token_sid(TokenSid::DefaultOwner).ok()?;
            let rid = user
                .rsplit('-')
                .next()
                .and_then(|rid| rid.parse::<u32>().ok());
            let uid = rid.filter(|&rid| rid != 0).unwrap_or(u32::MAX - 1);
            Some(Identity {
                user,
                default_owner,
                uid,
            })
        })
        .as_ref()
}

/// The SIDs trusted like root on Unix: `NT AUTHORITY\SYSTEM`, `BUILTIN\Administrators`
/// and `NT SERVICE\TrustedInstaller` (the owner of `C:\` and the system's own
/// directories).
const ROOT_SIDS: [&str; 3] = [
    "S-1-5-18",
    "S-1-5-32-544",
    "S-1-5-80-956008885-3418522649-1831038044-1853292631-2271478464",
];

/// ACE trustees that grant nothing to another user: `CREATOR OWNER` (a placeholder,
/// replaced by the creator's SID in what inherits it) and `OWNER RIGHTS` (whoever owns
/// the object, which the owner check decides on).
const OWNER_SIDS: [&str; 2] = ["S-1-3-0", "S-1-3-4"];

/// Rights that read a file's content or list a directory.
const READ_RIGHTS: u32 = 0x0001 /* FILE_READ_DATA, FILE_LIST_DIRECTORY */
    | 0x8000_0000 /* GENERIC_READ */
    | 0x1000_0000 /* GENERIC_ALL */;
/// Rights that write a file or add entries to a directory, but do not remove or
/// rename what is there.
const ADD_RIGHTS: u32 = 0x0002 /* FILE_WRITE_DATA, FILE_ADD_FILE */
    | 0x0004 /* FILE_APPEND_DATA, FILE_ADD_SUBDIRECTORY */
    | 0x4000_0000 /* GENERIC_WRITE */;
/// Rights that remove or rename entries (DELETE on the object, FILE_DELETE_CHILD on its
/// directory) or take the object over (its DACL, its owner).
const REPLACE_RIGHTS: u32 = 0x0040 /* FILE_DELETE_CHILD */
    | 0x0001_0000 /* DELETE */
    | 0x0004_0000 /* WRITE_DAC */
    | 0x0008_0000 /* WRITE_OWNER */
    | 0x1000_0000 /* GENERIC_ALL */;

/// The object's owner and DACL as a Unix uid and mode, for `runtime_dir`'s checks.
///
/// The uid: [`euid`] for the current user (or the token's default owner, what an
/// elevated administrator's files are owned by), 0 for the system's own SIDs
/// ([`ROOT_SIDS`]), another number for anyone else (their RID, or `u32::MAX` where that
/// would pass for us or root).
///
/// The mode starts as 0700 (0600 for a file) and gains, for every allow ACE that
/// applies to the object (not inherit-only) and names anyone but the current user, its
/// default owner, [`ROOT_SIDS`] and [`OWNER_SIDS`]: 044 for read rights, 022 for
/// write rights (an allow ACE of an object type, which files do not have, counts as
/// both); a directory where others may only add entries (what
/// `Authenticated Users` may do at `C:\`) also gets 01000, the sticky bit, since they
/// cannot remove or rename ours. Deny ACEs are ignored (they could only take rights
/// away), so the mode never says less than the DACL grants. No DACL at all grants
/// everyone everything: 0777.
fn security_of(handle: HANDLE, dir: bool) -> io::Result<(u32, u32)> {
    use windows_sys::Win32::Security::Authorization::{GetSecurityInfo, SE_FILE_OBJECT};
    use windows_sys::Win32::Security::{
        ACCESS_ALLOWED_ACE, ACE_HEADER, ACL, DACL_SECURITY_INFORMATION, GetAce, INHERIT_ONLY_ACE,
        OWNER_SECURITY_INFORMATION, PSECURITY_DESCRIPTOR, PSID,
    };
    /// ACCESS_ALLOWED_ACE_TYPE and ACCESS_ALLOWED_CALLBACK_ACE_TYPE, which share the
    /// layout of ACCESS_ALLOWED_ACE (header, mask, SID).
    const ALLOWED_TYPES: [u8; 2] = [0, 9];
    /// ACCESS_ALLOWED_OBJECT_ACE_TYPE and its callback form (directory-service objects,
    /// never seen on files): not read, taken as granting someone else everything.
    const OBJECT_TYPES: [u8; 2] = [5, 11];

    let identity = identity().ok_or_else(|| {
        io::Error::other("cannot look up the current user's SID in the process token")
    })?;
    let ours = |sid: &str| sid == identity.user || sid == identity.default_owner;
    let mut owner: PSID = std::ptr::null_mut();
    let mut dacl: *mut ACL = std::ptr::null_mut();
    let mut descriptor: PSECURITY_DESCRIPTOR = std::ptr::null_mut();
    // SAFETY: the handle is open (the caller borrows it) and was opened with
    // READ_CONTROL; the owner and DACL pointers point into the descriptor the call
    // allocates, which is freed with LocalFree after their last use, below.
    let status = unsafe {
        GetSecurityInfo(
            handle,
            SE_FILE_OBJECT,
            OWNER_SECURITY_INFORMATION | DACL_SECURITY_INFORMATION,
            &mut owner,
            std::ptr::null_mut(),
            &mut dacl,
            std::ptr::null_mut(),
            &mut descriptor,
        )
    };
    if status != 0 {
        return Err(io::Error::from_raw_os_error(status as i32));
    }
    let result = (|| {
        let owner = if owner.is_null() {
            None
        } else {
            Some(sid_string(owner)?)
        };
        let uid = match owner.as_deref() {
            Some(sid) if ours(sid) => identity.uid,
            Some(sid) if ROOT_SIDS.contains(&sid) => 0,
            Some(sid) => sid
                .rsplit('-')
                .next()
                .and_then(|rid| rid.parse::<u32>().ok())
                .filter(|&rid| rid != 0 && rid != identity.uid)
                .unwrap_or(u32::MAX),
            None => u32::MAX,
        };
        let mut mode = if dir { 0o700 } else { 0o600 };
        if dacl.is_null() {
            return Ok((uid, mode | 0o777));
        }
        let (mut read, mut add, mut replace) = (false, false, false);
        // SAFETY: `dacl` points to a valid ACL inside the descriptor.
        let count = unsafe { (*dacl).AceCount };
        for index in 0..u32::from(count) {
            let mut ace: *mut core::ffi::c_void = std::ptr::null_mut();
            // SAFETY: `index` is below the ACL's count; `ace` is a valid out-pointer.
            if unsafe { GetAce(dacl, index, &mut ace) } == 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: every ACE starts with an ACE_HEADER.
            let header = unsafe { &*ace.cast::<ACE_HEADER>() };
            if u32::from(header.AceFlags) & INHERIT_ONLY_ACE != 0 {
                continue;
            }
            if OBJECT_TYPES.contains(&header.AceType) {
                (read, add, replace) = (true, true, true);
                continue;
            }
            if !ALLOWED_TYPES.contains(&header.AceType) {
                continue;
            }
            // SAFETY: an allow ACE of these types is an ACCESS_ALLOWED_ACE whose SID
            // starts at SidStart.
            let (mask, sid) = unsafe {
                let allowed = ace.cast::<ACCESS_ALLOWED_ACE>();
                (
                    (*allowed).Mask,
                    std::ptr::addr_of_mut!((*allowed).SidStart).cast(),
                )
            };
            let trustee = sid_string(sid)?;
            if ours(&trustee)
                || ROOT_SIDS.contains(&trustee.as_str())
                || OWNER_SIDS.contains(&trustee.as_str())
            {
                continue;
            }
            read |= mask & READ_RIGHTS != 0;
            add |= mask & ADD_RIGHTS != 0;
            replace |= mask & REPLACE_RIGHTS != 0;
        }
        if read {
            mode |= 0o044;
        }
        if add || replace {
            mode |= 0o022;
        }
        if dir && add && !replace {
            mode |= 0o1000;
        }
        Ok((uid, mode))
    })();
    // SAFETY: allocated by GetSecurityInfo; nothing points into it any more.
    unsafe { windows_sys::Win32::Foundation::LocalFree(descriptor) };
    result
}

/// A SID as a string (`S-1-5-...`).
fn sid_string(sid: windows_sys::Win32::Security::PSID) -> io::Result<String> {
    use windows_sys::Win32::Security::Authorization::ConvertSidToStringSidW;
    let mut string: windows_sys::core::PWSTR = std::ptr::null_mut();
    // SAFETY: `sid` is a valid SID (the caller's); the string the conversion allocates
    // is copied, then freed with LocalFree.
    unsafe {
        if ConvertSidToStringSidW(sid, &mut string) == 0 {
            return Err(io::Error::last_os_error());
        }
        let len = (0..).take_while(|&i| *string.add(i) != 0).count();
        let text = String::from_utf16_lossy(std::slice::from_raw_parts(string, len));
        windows_sys::Win32::Foundation::LocalFree(string.cast());
        Ok(text)
    }
}

pub(crate) fn stat_dir(dir: &DirHandle) -> io::Result<Stat> {
    let opened = open_for_security(dir, true)?;
    stat_of(&opened.metadata()?, &opened)
}

pub(crate) fn stat_file(file: &File) -> io::Result<Stat> {
    stat_of(&file.metadata()?, file)
}

pub(crate) fn lstat(path: &Path) -> io::Result<Stat> {
    let opened = open_for_security(path, false)?;
    stat_of(&std::fs::symlink_metadata(path)?, &opened)
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

/// Opens `file` in `dir`; one this creates is private to the current user from the
/// start (`D:P(A;;FA;;;<user SID>)`, what mode 0600 is on Unix) rather than relying on
/// what it inherits from `dir`.
pub(crate) fn open_at(dir: &DirHandle, file: &str, access: Access) -> io::Result<File> {
    use windows_sys::Win32::Foundation::{GENERIC_READ, GENERIC_WRITE};
    use windows_sys::Win32::Storage::FileSystem::{
        CREATE_NEW, CreateFileW, FILE_ATTRIBUTE_NORMAL, FILE_GENERIC_WRITE, FILE_SHARE_DELETE,
        FILE_SHARE_READ, FILE_SHARE_WRITE, FILE_WRITE_DATA, OPEN_ALWAYS,
    };
    let (desired, disposition) = match access {
        Access::Read => return OpenOptions::new().read(true).open(dir.join(file)),
        Access::Lock => (GENERIC_READ | GENERIC_WRITE, OPEN_ALWAYS),
        // Without FILE_WRITE_DATA every write goes to the end (as std's append does).
        Access::Append => (FILE_GENERIC_WRITE & !FILE_WRITE_DATA, OPEN_ALWAYS),
        Access::CreateNew => (GENERIC_READ | GENERIC_WRITE, CREATE_NEW),
    };
    let path = wide(dir.join(file).as_os_str());
    with_private_descriptor("", |attributes| {
        // SAFETY: `path` is NUL-terminated and `attributes` valid for the call; the
        // handle returned is owned by the File made of it.
        unsafe {
            let handle = CreateFileW(
                path.as_ptr(),
                desired,
                FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE,
                attributes,
                disposition,
                FILE_ATTRIBUTE_NORMAL,
                std::ptr::null_mut(),
            );
            if handle == INVALID_HANDLE_VALUE {
                return Err(io::Error::last_os_error());
            }
            Ok(File::from_raw_handle(handle as _))
        }
    })
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
    use windows_sys::Win32::Storage::FileSystem::CreateDirectoryW;
    let path = wide(path.as_os_str());
    with_private_descriptor("OICI", |attributes| {
        // SAFETY: `path` is NUL-terminated and `attributes` valid for the call.
        if unsafe { CreateDirectoryW(path.as_ptr(), attributes) } == 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    })
}

/// Calls `create` with security attributes whose descriptor has a protected DACL
/// granting full control to the current user alone, with the ACE flags `inheritance`
/// (`OICI` for a directory, none for a file): `D:P(A;<inheritance>;FA;;;<user SID>)`.
fn with_private_descriptor<T>(
    inheritance: &str,
    create: impl FnOnce(&windows_sys::Win32::Security::SECURITY_ATTRIBUTES) -> io::Result<T>,
) -> io::Result<T> {
    use windows_sys::Win32::Security::Authorization::{
        ConvertStringSecurityDescriptorToSecurityDescriptorW, SDDL_REVISION_1,
    };
    use windows_sys::Win32::Security::{PSECURITY_DESCRIPTOR, SECURITY_ATTRIBUTES};

    let sddl = format!("D:P(A;{inheritance};FA;;;{})", current_user_sid()?);
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
        let result = create(&attributes);
        windows_sys::Win32::Foundation::LocalFree(descriptor);
        result
    }
}

/// Which SID of the process token [`token_sid`] reads.
#[derive(Clone, Copy)]
enum TokenSid {
    User,
    DefaultOwner,
}

/// The current user's SID as a string (`S-1-5-21-...`), from this process's token.
pub(crate) fn current_user_sid() -> io::Result<String> {
    identity()
        .map(|identity| identity.user.clone())
        .ok_or_else(|| io::Error::other("cannot look up the current user's SID"))
}

/// The token's user (`TokenUser`) or default owner (`TokenOwner`) SID as a string.
fn token_sid(which: TokenSid) -> io::Result<String> {
    use windows_sys::Win32::Security::{
        GetTokenInformation, TOKEN_OWNER, TOKEN_QUERY, TOKEN_USER, TokenOwner, TokenUser,
    };
    use windows_sys::Win32::System::Threading::{GetCurrentProcess, OpenProcessToken};

    let class = match which {
        TokenSid::User => TokenUser,
        TokenSid::DefaultOwner => TokenOwner,
    };
    // SAFETY: the token handle opened here is closed here; the buffer is 8-aligned and
    // as large as the first call asked for, and holds a TOKEN_USER or TOKEN_OWNER (as
    // `class` says) whose SID points into it while it lives.
    unsafe {
        let mut token: HANDLE = std::ptr::null_mut();
        if OpenProcessToken(GetCurrentProcess(), TOKEN_QUERY, &mut token) == 0 {
            return Err(io::Error::last_os_error());
        }
        let token = OwnedHandle::from_raw_handle(token as _);
        let mut size = 0u32;
        GetTokenInformation(
            token.as_raw_handle() as HANDLE,
            class,
            std::ptr::null_mut(),
            0,
            &mut size,
        );
        let mut buffer = vec![0u64; (size as usize).div_ceil(8)];
        if GetTokenInformation(
            token.as_raw_handle() as HANDLE,
            class,
            buffer.as_mut_ptr().cast(),
            size,
            &mut size,
        ) == 0
        {
            return Err(io::Error::last_os_error());
        }
        let sid = match which {
            TokenSid::User => (*buffer.as_ptr().cast::<TOKEN_USER>()).User.Sid,
            TokenSid::DefaultOwner => (*buffer.as_ptr().cast::<TOKEN_OWNER>()).Owner,
        };
        sid_string(sid)
    }
}

/// The platform's own per-user directory for runtime state: `%LOCALAPPDATA%`, private
/// to its user by default ACLs.
pub(crate) fn platform_runtime_base() -> Option<PathBuf> {
    std::env::var_os("LOCALAPPDATA")
        .filter(|value| !value.is_empty())
        .map(PathBuf::from)
}

/// Tests: replaces the DACL of `path` with the one in `sddl` (protected: nothing
/// inherited).
#[cfg(test)]
pub(crate) fn set_dacl(path: &Path, sddl: &str) {
    use std::os::windows::fs::OpenOptionsExt;
    use windows_sys::Win32::Security::Authorization::{
        ConvertStringSecurityDescriptorToSecurityDescriptorW, SDDL_REVISION_1, SetSecurityInfo,
    };
    use windows_sys::Win32::Security::{
        ACL, DACL_SECURITY_INFORMATION, GetSecurityDescriptorDacl,
        PROTECTED_DACL_SECURITY_INFORMATION, PSECURITY_DESCRIPTOR,
    };
    use windows_sys::Win32::Storage::FileSystem::{
        FILE_FLAG_BACKUP_SEMANTICS, READ_CONTROL, WRITE_DAC,
    };
    let opened = OpenOptions::new()
        .access_mode(READ_CONTROL | WRITE_DAC)
        .custom_flags(FILE_FLAG_BACKUP_SEMANTICS)
        .open(path)
        .unwrap();
    let sddl = wide(OsStr::new(sddl));
    let mut descriptor: PSECURITY_DESCRIPTOR = std::ptr::null_mut();
    // SAFETY: `sddl` is NUL-terminated; the DACL points into the descriptor, freed
    // after its last use; the handle is open with WRITE_DAC.
    unsafe {
        assert_ne!(
            ConvertStringSecurityDescriptorToSecurityDescriptorW(
                sddl.as_ptr(),
                SDDL_REVISION_1,
                &mut descriptor,
                std::ptr::null_mut(),
            ),
            0,
            "{}",
            io::Error::last_os_error()
        );
        let (mut present, mut defaulted) = (0, 0);
        let mut dacl: *mut ACL = std::ptr::null_mut();
        assert_ne!(
            GetSecurityDescriptorDacl(descriptor, &mut present, &mut dacl, &mut defaulted),
            0
        );
        let status = SetSecurityInfo(
            opened.as_raw_handle() as HANDLE,
            windows_sys::Win32::Security::Authorization::SE_FILE_OBJECT,
            DACL_SECURITY_INFORMATION | PROTECTED_DACL_SECURITY_INFORMATION,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            dacl,
            std::ptr::null(),
        );
        windows_sys::Win32::Foundation::LocalFree(descriptor);
        assert_eq!(
            status,
            0,
            "SetSecurityInfo: {}",
            io::Error::from_raw_os_error(status as i32)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "ls-winacl-{tag}-{}-{:x}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos()
        ));
        create_dir_all_private(&dir).unwrap();
        dir
    }

    #[test]
    fn a_private_directory_and_its_files_are_ours_and_private() {
        let base = scratch("private");
        let stat = stat_dir(&base).unwrap();
        assert_eq!(
            (stat.kind, stat.uid, stat.mode),
            (FileKind::Dir, euid(), 0o700)
        );
        let file = open_at(&base, "file", Access::CreateNew).unwrap();
        let stat = stat_file(&file).unwrap();
        assert_eq!(
            (stat.kind, stat.uid, stat.mode),
            (FileKind::File, euid(), 0o600)
        );
        drop(file);
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn what_everyone_may_do_shows_in_the_group_and_other_bits() {
        let base = scratch("everyone");
        set_dacl(
            &base,
            &format!(
                "D:(A;OICI;FA;;;{})(A;;FA;;;WD)",
                current_user_sid().unwrap()
            ),
        );
        let stat = stat_dir(&base).unwrap();
        assert_eq!(stat.uid, euid());
        // (Wine keeps a DACL as Unix permissions, and gives Everyone rw- for FA.)
        assert_eq!(stat.mode & 0o1022, 0o022, "{:o}", stat.mode);
        std::fs::remove_dir_all(&base).unwrap();

        // The runtime directory itself.
        let base = scratch("everyone-runtime");
        create_dir_all_private(&base.join("name")).unwrap();
        set_dacl(
            &base.join("name"),
            &format!("D:(A;;FA;;;{})(A;;FR;;;WD)", current_user_sid().unwrap()),
        );
        let stat = stat_dir(&base.join("name")).unwrap();
        assert_eq!(stat.mode & 0o044, 0o044, "{:o}", stat.mode);
        std::fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn a_directory_others_may_only_add_to_is_like_a_sticky_one() {
        if std::env::var_os("WINECONFIGDIR").is_some() {
            // Wine keeps a DACL as Unix permissions: add-only rights become full write.
            eprintln!("skipped under Wine, which cannot store an add-only ACE");
            return;
        }
        let base = scratch("add");
        let me = current_user_sid().unwrap();
        set_dacl(&base, &format!("D:(A;OICI;FA;;;{me})(A;;0x100006;;;WD)"));
        let stat = stat_dir(&base).unwrap();
        assert_eq!(stat.mode & 0o1077, 0o1022, "{:o}", stat.mode);
        std::fs::remove_dir_all(&base).unwrap();
    }
}
