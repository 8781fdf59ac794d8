//! The rig's world on this machine: one network lab ([`NetLab`]: a namespace joined to the host
//! by a veth pair) per remote site (pool, monitor, infrastructure, an outside host), a cgroup
//! for the rig's own programs (the only thing the demo agent watches), and every process the
//! demo started. Dropping the lab stops the processes and removes the cgroup and namespaces; a
//! lab left over by a killed demo is cleaned up when the next one starts.

use std::fs;
use std::io::{BufRead as _, BufReader};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context as _, Result, bail};
use bitsecure_test::lab::{NetLab, Subnet};

/// Prefix of every namespace, veth and cgroup the demo creates.
pub const PREFIX: &str = "bsdemo";

/// The remote sites, each a namespace `bsdemo-<name>` on 10.77.<subnet>.0/24: the host side is
/// .1, the site is .2. `hijack` is an attacker's copy of the pool, in another network.
pub const SITES: [(&str, u8); 5] = [
    ("pool", 1),
    ("monitor", 2),
    ("infra", 3),
    ("hijack", 6),
    ("outside", 9),
];

/// The address of a site.
pub fn site_address(site: &str) -> Ipv4Addr {
    let subnet = SITES
        .iter()
        .find(|(name, _)| *name == site)
        .map(|(_, subnet)| *subnet)
        .unwrap_or_else(|| panic!("no site {site}"));
    Ipv4Addr::new(10, 77, subnet, 2)
}

pub struct Lab {
    pub dir: PathBuf,
    pub cgroup: PathBuf,
    /// One namespace + veth pair per remote site; removed when the lab is dropped, after
    /// the processes stop.
    sites: Vec<NetLab>,
    processes: Vec<(String, Child)>,
    /// Held while the lab exists: its names and addresses are fixed, so a second lab on the
    /// machine (another test run, a demo by hand) waits instead of tearing this one down.
    _machine_lock: fs::File,
}

/// The lock file that keeps one rig lab per machine.
const MACHINE_LOCK: &str = "/run/bitsecure-rig.lock";

/// Takes the machine's rig lab lock, waiting (and saying so) while another lab holds it.
fn lock_machine() -> Result<fs::File> {
    use std::os::fd::AsRawFd as _;
    let file =
        fs::File::create(MACHINE_LOCK).with_context(|| format!("cannot create {MACHINE_LOCK}"))?;
    // SAFETY: flock on a descriptor we own; released when the file is closed.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        eprintln!(
            "another rig lab runs on this machine ({MACHINE_LOCK} is locked): waiting for it to end"
        );
        // SAFETY: as above; blocks until the other lab's process exits or drops its lab.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            bail!(
                "cannot lock {MACHINE_LOCK}: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    Ok(file)
}

impl Lab {
    pub fn create(dir: &Path) -> Result<Self> {
        let machine_lock = lock_machine()?;
        remove_leftover_cgroup();
        fs::create_dir_all(dir.join("bin"))?;
        fs::create_dir_all(dir.join("logs"))?;
        let cgroup = bitsecure::kernel::cgroup::resolve_attach_path("")?.join(PREFIX);
        let mut lab = Self {
            dir: dir.to_owned(),
            cgroup: cgroup.clone(),
            sites: Vec::new(),
            processes: Vec::new(),
            _machine_lock: machine_lock,
        };
        fs::create_dir(&cgroup).with_context(|| format!("cannot create {}", cgroup.display()))?;
        for (site, subnet) in SITES {
            let name = format!("{PREFIX}-{site}");
            let addresses = Subnet {
                host: Ipv4Addr::new(10, 77, subnet, 1).into(),
                peer: site_address(site).into(),
                prefix_len: 24,
            };
            // A leftover namespace of a killed demo goes first (see NetLab::create).
            lab.sites
                .push(NetLab::create(&name, &name, "eth0", &[addresses])?);
        }
        Ok(lab)
    }

    /// Copies the rig binary to `name`, so the kernel knows the process by that name.
    pub fn program(&self, name: &str) -> Result<PathBuf> {
        let path = self.dir.join("bin").join(name);
        if !path.exists() {
            let rig = std::env::current_exe().context("cannot find the rig binary")?;
            fs::copy(&rig, &path).with_context(|| format!("cannot copy {}", rig.display()))?;
        }
        Ok(path)
    }

    /// Starts the rig binary with `args` at a remote site (`name` names its log), waiting for
    /// its `ready` line. Remote programs are not watched, so their name does not matter.
    pub fn start_at_site(&mut self, site: &str, name: &str, args: &[&str]) -> Result<()> {
        let program = std::env::current_exe().context("cannot find the rig binary")?;
        let namespace = format!("{PREFIX}-{site}");
        let lab = self
            .sites
            .iter()
            .find(|lab| lab.namespace() == namespace)
            .with_context(|| format!("no site {site}"))?;
        let mut command = lab.command(program);
        command.args(args);
        self.spawn(name, command, true)
    }

    /// Starts the infrastructure site's services: a DNS server answering `pool_name` from a
    /// zone file (it reads the file per query: [`Lab::answer`] moves the name while it runs),
    /// first with the pool site's address, and an NTP responder.
    pub fn start_infrastructure(&mut self, pool_name: &str) -> Result<()> {
        self.answer(pool_name, "pool")?;
        let zone = self.zone().to_string_lossy().into_owned();
        let dns = format!("{}:53", site_address("infra"));
        let ntp = format!("{}:123", site_address("infra"));
        self.start_at_site(
            "infra",
            "dns",
            &["dns-server", "--listen", &dns, "--zone", &zone],
        )?;
        self.start_at_site(
            "infra",
            "ntp",
            &["udp-responder", "--listen", &ntp, "--reply-bytes", "48"],
        )
    }

    /// Makes the infrastructure's DNS server answer `name` with the address of `site`.
    pub fn answer(&self, name: &str, site: &str) -> Result<()> {
        fs::write(self.zone(), format!("{name} {}\n", site_address(site)))
            .context("cannot write the DNS zone")
    }

    fn zone(&self) -> PathBuf {
        self.dir.join("zone")
    }

    /// Starts `name` with `args` on the rig itself (in the watched cgroup).
    pub fn start_on_rig(&mut self, name: &str, args: &[&str]) -> Result<()> {
        let program = self.program(name)?;
        self.spawn(name, self.in_cgroup(&program, args), false)
    }

    /// Starts `program` (any path) with `args` on the rig; `name` names its log and process.
    pub fn start_program_on_rig(
        &mut self,
        name: &str,
        program: &Path,
        args: &[&str],
    ) -> Result<()> {
        self.spawn(name, self.in_cgroup(program, args), false)
    }

    /// A copy of the rig program `name` in a hidden directory: the same content and name, not
    /// the same executable.
    pub fn hidden_copy(&self, name: &str) -> Result<PathBuf> {
        let dir = self.dir.join("bin").join(".cache");
        fs::create_dir_all(&dir)?;
        let copy = dir.join(name);
        fs::copy(self.program(name)?, &copy).context("cannot copy the program")?;
        Ok(copy)
    }

    /// Replaces the rig program `name` with other content at the same path, as a patched
    /// binary would be (a trailing byte does not stop it from running). Stop it first.
    pub fn patch_program(&self, name: &str) -> Result<()> {
        let path = self.program(name)?;
        let mut content = fs::read(&path)?;
        content.extend_from_slice(b"patched");
        let staging = path.with_extension("patched");
        fs::write(&staging, content)?;
        fs::set_permissions(
            &staging,
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )?;
        fs::rename(&staging, &path).context("cannot replace the program")
    }

    /// Runs `name` with `args` on the rig until it exits; fails if it fails.
    pub fn run_on_rig(&self, name: &str, args: &[&str]) -> Result<()> {
        let program = self.program(name)?;
        let log = self.log(name)?;
        let status = self
            .in_cgroup(&program, args)
            .stdout(log.try_clone()?)
            .stderr(log)
            .status()
            .with_context(|| format!("cannot run {name}"))?;
        if !status.success() {
            bail!(
                "{name} failed ({status}); see {}",
                self.log_path(name).display()
            );
        }
        Ok(())
    }

    /// Starts a long-running process (e.g. the agent, Prometheus) outside the rig's cgroup.
    pub fn start(&mut self, name: &str, command: Command) -> Result<()> {
        self.spawn(name, command, false)
    }

    /// Fails naming the first process the lab started that has exited already (a program
    /// that refused its arguments, a server that could not bind), with its log.
    pub fn check_running(&mut self) -> Result<()> {
        for (name, child) in &mut self.processes {
            if let Some(status) = child.try_wait()? {
                let log = fs::read_to_string(self.dir.join("logs").join(format!("{name}.log")))
                    .unwrap_or_default();
                bail!("{name} exited ({status}): {}", log.trim());
            }
        }
        Ok(())
    }

    /// Stops a process the lab started: SIGTERM, then SIGKILL after 10 s.
    pub fn stop(&mut self, name: &str) -> Result<()> {
        let index = self
            .processes
            .iter()
            .position(|(process, _)| process == name)
            .with_context(|| format!("{name} is not running"))?;
        let (_, child) = self.processes.remove(index);
        terminate(child);
        Ok(())
    }

    pub fn log_path(&self, name: &str) -> PathBuf {
        self.dir.join("logs").join(format!("{name}.log"))
    }

    fn log(&self, name: &str) -> Result<fs::File> {
        fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(name))
            .context("cannot open a log file")
    }

    fn in_cgroup(&self, program: &Path, args: &[&str]) -> Command {
        let mut command = Command::new("sh");
        command
            .args(["-c", "echo $$ > \"$0/cgroup.procs\" && exec \"$@\""])
            .arg(&self.cgroup)
            .arg(program)
            .args(args);
        command
    }

    fn spawn(&mut self, name: &str, mut command: Command, wait_ready: bool) -> Result<()> {
        let log = self.log(name)?;
        command.stderr(log.try_clone()?);
        command.stdout(if wait_ready {
            Stdio::piped()
        } else {
            log.into()
        });
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start {name}"))?;
        let stdout = child.stdout.take();
        self.processes.push((name.to_owned(), child));
        if let Some(stdout) = stdout {
            let (ready, waiting) = mpsc::channel();
            std::thread::spawn(move || {
                let mut lines = BufReader::new(stdout).lines();
                let _ = ready.send(lines.next().and_then(Result::ok));
                lines.for_each(drop);
            });
            match waiting.recv_timeout(Duration::from_secs(10)) {
                Ok(Some(line)) if line == "ready" => {}
                _ => bail!(
                    "{name} did not start; see {}",
                    self.log_path(name).display()
                ),
            }
        }
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for (_, child) in self.processes.drain(..).rev() {
            terminate(child);
        }
        remove_leftover_cgroup();
        // Then the sites' namespaces and veth pairs go, with anything still running in them.
    }
}

/// SIGTERM (a clean exit for the agent and Prometheus), SIGKILL after 10 s.
fn terminate(mut child: Child) {
    let pid = child.id() as libc::pid_t;
    // SAFETY: kill(2) on a child we have not yet waited for (so the pid is still ours).
    unsafe { libc::kill(pid, libc::SIGTERM) };
    for _ in 0..100 {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Removes the rig's cgroup, killing what is left in it (e.g. by a killed demo).
fn remove_leftover_cgroup() {
    let Ok(cgroup) =
        bitsecure::kernel::cgroup::resolve_attach_path("").map(|mount| mount.join(PREFIX))
    else {
        return;
    };
    if cgroup.exists() {
        if let Ok(pids) = fs::read_to_string(cgroup.join("cgroup.procs")) {
            for pid in pids
                .lines()
                .filter_map(|pid| pid.parse::<libc::pid_t>().ok())
            {
                // SAFETY: kill(2) with a pid read from the cgroup; no memory involved.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        // The cgroup can be removed once its processes are gone.
        for _ in 0..50 {
            if fs::remove_dir(&cgroup).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
