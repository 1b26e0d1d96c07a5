//! The .deb and .rpm of `bash packaging/build.sh`, inspected without installing them: files,
//! modes, owners, conffiles, dependencies and scriptlets; the glibc floor of the packaged
//! binary; the systemd units, the service and the shards' template (`systemd-analyze verify`
//! and `security`); the man pages and completions.
//!
//! **The first run builds the release binary and the packages** (about 10 minutes on 2 cores)
//! when target/packages/ holds no .deb or .rpm; later runs reuse them. After changing the
//! packaging or the code, run `bash packaging/build.sh` again (or delete target/packages/).
//! The tools (dpkg-deb, rpm, objdump, systemd-analyze, cargo-deb, cargo-generate-rpm,
//! cargo-zigbuild, zig) are installed by `.ci/install-packaging-tools.sh`; a missing one fails
//! the test and names that script.
//! `.ci/package-install-test.sh` installs the .deb for real.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

const INSTALLER: &str = ".ci/install-packaging-tools.sh";
/// RHEL 8's glibc: the oldest the packaged binary must run on.
const GLIBC_FLOOR: [u32; 2] = [2, 28];
/// The packaged systemd units: the service and the template of the shards
/// (`defender-bridge@0of3`), each in packaging/ and in /usr/lib/systemd/system/.
const UNITS: &[&str] = &["defender-bridge.service", "defender-bridge@.service"];
/// The instance of the template that `systemd-analyze` checks.
const SHARD_INSTANCE: &str = "defender-bridge@0of3.service";
/// The visible commands, each with its own man page.
const SUBCOMMANDS: &[&str] = &[
    "convert",
    "send",
    "send-test",
    "run",
    "demo",
    "check",
    "tenants",
    "formats",
    "dead-letters",
];

struct Packages {
    deb: PathBuf,
    rpm: PathBuf,
    /// The .deb unpacked (`dpkg-deb -x`).
    root: PathBuf,
}

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Builds the packages once if they are missing, then unpacks the .deb. A failure is kept, so
/// that the other tests report it instead of building again.
fn packages() -> &'static Packages {
    static PACKAGES: OnceLock<Result<Packages, String>> = OnceLock::new();
    match PACKAGES.get_or_init(find_or_build) {
        Ok(p) => p,
        Err(e) => panic!("{e}"),
    }
}

fn find_or_build() -> Result<Packages, String> {
    let dir = manifest_dir().join("target/packages");
    if find(&dir, ".deb").is_none() || find(&dir, ".rpm").is_none() {
        eprintln!("target/packages/ has no packages: running packaging/build.sh (release build)");
        let out = Command::new("bash")
            .arg("packaging/build.sh")
            .current_dir(manifest_dir())
            .output()
            .map_err(|e| format!("cannot run bash packaging/build.sh: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "packaging/build.sh failed ({}); the tools come from {INSTALLER}:\n{}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    let deb = find(&dir, ".deb").ok_or("packaging/build.sh made no .deb")?;
    let rpm = find(&dir, ".rpm").ok_or("packaging/build.sh made no .rpm")?;
    let root = manifest_dir().join("target/packaging-test/deb-root");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).map_err(|e| format!("{}: {e}", root.display()))?;
    tool(
        "dpkg-deb",
        &["-x", path_str(&deb), path_str(&root)],
        "unpacks",
    )?;
    Ok(Packages { deb, rpm, root })
}

/// The one file in `dir` whose name ends with `suffix`.
fn find(dir: &Path, suffix: &str) -> Option<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    found.sort();
    assert!(
        found.len() <= 1,
        "more than one {suffix} in {}: {found:?}",
        dir.display()
    );
    found.pop()
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

/// Runs a tool and returns its stdout; a tool that is not installed is an error naming the
/// script that installs it.
fn tool(program: &str, args: &[&str], what: &str) -> Result<String, String> {
    let out = Command::new(program).args(args).output().map_err(|e| {
        format!("cannot run {program} ({e}), which {what}: `bash {INSTALLER}` installs it")
    })?;
    if !out.status.success() {
        return Err(format!(
            "{program} {args:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn run(program: &str, args: &[&str], what: &str) -> String {
    tool(program, args, what).unwrap_or_else(|e| panic!("{e}"))
}

/// `dpkg-deb -c` as (mode, owner/group, path without the leading '.').
fn deb_entries(deb: &Path) -> Vec<(String, String, String)> {
    run("dpkg-deb", &["-c", path_str(deb)], "lists the .deb")
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let path = f[5].trim_start_matches('.').to_string();
            (f[0].to_string(), f[1].to_string(), path)
        })
        .collect()
}

fn builtin_formats() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(manifest_dir().join("formats"))
        .expect("formats/")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".toml"))
        .collect();
    names.sort();
    assert!(!names.is_empty());
    names
}

/// Every file the packages must install, with its mode.
fn expected_files() -> Vec<(String, &'static str)> {
    let mut files = vec![
        ("/usr/bin/defender-bridge".to_string(), "-rwxr-xr-x"),
        (
            "/usr/lib/systemd/system/defender-bridge.service".to_string(),
            "-rw-r--r--",
        ),
        (
            "/usr/lib/systemd/system/defender-bridge@.service".to_string(),
            "-rw-r--r--",
        ),
        ("/etc/defender-bridge/config.toml".to_string(), "-rw-r-----"),
        (
            "/usr/share/bash-completion/completions/defender-bridge".to_string(),
            "-rw-r--r--",
        ),
        (
            "/usr/share/fish/vendor_completions.d/defender-bridge.fish".to_string(),
            "-rw-r--r--",
        ),
        (
            "/usr/share/man/man1/defender-bridge.1.gz".to_string(),
            "-rw-r--r--",
        ),
    ];
    for f in builtin_formats() {
        files.push((
            format!("/usr/share/defender-bridge/formats/{f}"),
            "-rw-r--r--",
        ));
    }
    for s in SUBCOMMANDS {
        files.push((
            format!("/usr/share/man/man1/defender-bridge-{s}.1.gz"),
            "-rw-r--r--",
        ));
    }
    files
}

#[test]
fn deb_holds_every_file_with_its_mode_and_owner() {
    let p = packages();
    let entries = deb_entries(&p.deb);
    let mut expected = expected_files();
    expected.push((
        "/usr/share/zsh/vendor-completions/_defender-bridge".to_string(),
        "-rw-r--r--",
    ));
    for (path, mode) in &expected {
        let Some((m, owner, _)) = entries.iter().find(|(_, _, p)| p == path) else {
            panic!("{path} is not in the .deb: {entries:#?}");
        };
        assert_eq!(m, mode, "{path}");
        // root (cargo-deb writes ids); config.toml gets its group in postinst (dpkg-statoverride).
        assert_eq!(owner, "0/0", "{path}");
    }
    // Hidden and clap's own commands get no man page.
    for (_, _, path) in &entries {
        assert!(
            !path.contains("generate") && !path.contains("-help."),
            "unexpected {path}"
        );
    }
    // The units in the package are the ones in the repository.
    for unit in UNITS {
        let shipped = std::fs::read(p.root.join("usr/lib/systemd/system").join(unit))
            .unwrap_or_else(|e| panic!("{unit} in the .deb: {e}"));
        let ours = std::fs::read(manifest_dir().join("packaging").join(unit)).unwrap();
        assert_eq!(shipped, ours, "{unit}");
    }
}

#[test]
fn deb_control_conffiles_depends_and_scripts() {
    let p = packages();
    let deb = path_str(&p.deb);
    let control = run("dpkg-deb", &["-f", deb], "reads the control file");
    let depends = control
        .lines()
        .find_map(|l| l.strip_prefix("Depends: "))
        .unwrap_or_else(|| panic!("no Depends in {control}"));
    assert!(depends.contains("adduser"), "{depends}");
    // Written by hand (Cargo.toml says why not $auto): it must cover what the binary needs and
    // stay at the floor.
    let libc = depends
        .split(',')
        .map(str::trim)
        .find_map(|d| d.strip_prefix("libc6 (>= "))
        .unwrap_or_else(|| panic!("no libc6 version in {depends}"));
    let libc = version(libc.trim_end_matches(')'));
    let needed = glibc_versions(&p.root.join("usr/bin/defender-bridge"));
    let needed = needed.iter().max().expect("GLIBC_ references");
    assert!(
        libc >= *needed && libc <= GLIBC_FLOOR.to_vec(),
        "the .deb asks for libc6 >= {libc:?}; the binary needs {needed:?}"
    );

    let conffiles = run("dpkg-deb", &["-I", deb, "conffiles"], "reads conffiles");
    assert_eq!(conffiles.trim(), "/etc/defender-bridge/config.toml");

    let postinst = run("dpkg-deb", &["-I", deb, "postinst"], "reads postinst");
    for needed in [
        "adduser --system --group",
        "dpkg-statoverride --update --add root defender-bridge",
        "install -d -m 0700 -o defender-bridge -g defender-bridge /var/lib/defender-bridge",
        // cargo-deb's restart-after-upgrade without start: try-restart on upgrade only.
        "deb-systemd-invoke try-restart",
    ] {
        assert!(
            postinst.contains(needed),
            "postinst lacks {needed:?}:\n{postinst}"
        );
    }
    // Never started or enabled on install: it needs the operator's config. cargo-deb's
    // "don't enable" snippet re-enables on upgrade only a unit that was enabled
    // (`debian-installed` guards it); its "enable" snippet enables every new install.
    assert!(
        postinst.contains("deb-systemd-helper debian-installed"),
        "{postinst}"
    );
    // The template's instances are the operator's to enable: no cargo-deb snippet names the
    // template; the running ones are restarted on upgrade, and only then.
    let shards = postinst
        .lines()
        .filter(|l| l.contains("defender-bridge@"))
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect::<Vec<_>>();
    assert_eq!(
        shards,
        ["systemctl try-restart 'defender-bridge@*.service' >/dev/null 2>&1 || true"],
        "{postinst}"
    );
    assert!(
        postinst.contains("[ \"$1\" = \"configure\" ] && [ -n \"$2\" ]"),
        "shards restarted on upgrade only: {postinst}"
    );
    for never in ["deb-systemd-invoke start", "new installations run enable"] {
        assert!(
            !postinst.contains(never),
            "postinst has {never:?}:\n{postinst}"
        );
    }
    let prerm = run("dpkg-deb", &["-I", deb, "prerm"], "reads prerm");
    assert!(
        prerm.contains("if [ \"$1\" = \"remove\" ]")
            && prerm.contains("systemctl stop 'defender-bridge@*.service'"),
        "removal stops the shards: {prerm}"
    );
    let postrm = run("dpkg-deb", &["-I", deb, "postrm"], "reads postrm");
    assert!(
        postrm.contains("rm -rf /etc/defender-bridge /var/lib/defender-bridge"),
        "{postrm}"
    );
    let purge_block = postrm
        .split("if [ \"$1\" = \"purge\" ]")
        .nth(1)
        .unwrap_or_else(|| panic!("no purge branch in postrm:\n{postrm}"));
    assert!(purge_block.contains("rm -rf"), "{postrm}");
}

#[test]
fn rpm_holds_every_file_with_its_mode_owner_and_config_flag() {
    let p = packages();
    let rpm = path_str(&p.rpm);
    let listed = run("rpm", &["-qlp", rpm], "lists the .rpm");
    // mode user group flags path; flags "c" = %config, "n" = noreplace.
    let files = run(
        "rpm",
        &[
            "-qp",
            "--qf",
            "[%{FILEMODES:perms} %{FILEUSERNAME} %{FILEGROUPNAME} %{FILEFLAGS:fflags} %{FILENAMES}\n]",
            rpm,
        ],
        "reads the .rpm's file list",
    );
    let mut expected = expected_files();
    // Fedora and RHEL read zsh completions from site-functions (vendor-completions is Debian's).
    expected.push((
        "/usr/share/zsh/site-functions/_defender-bridge".to_string(),
        "-rw-r--r--",
    ));
    for (path, mode) in &expected {
        assert!(
            listed.lines().any(|l| l == path),
            "{path} not in:\n{listed}"
        );
        let line = files
            .lines()
            .find(|l| l.ends_with(&format!(" {path}")))
            .unwrap_or_else(|| panic!("{path} not in:\n{files}"));
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(f[0], *mode, "{line}");
        if path == "/etc/defender-bridge/config.toml" {
            assert_eq!((f[1], f[2]), ("root", "defender-bridge"), "{line}");
            assert!(
                f[3].contains('c') && f[3].contains('n'),
                "not config(noreplace): {line}"
            );
        } else {
            assert_eq!((f[1], f[2]), ("root", "root"), "{line}");
        }
    }
}

#[test]
fn rpm_scriptlets_and_requires() {
    let p = packages();
    let rpm = path_str(&p.rpm);
    let scripts = run("rpm", &["-qp", "--scripts", rpm], "reads the scriptlets");
    // "preinstall scriptlet:" (or "… scriptlet (using /bin/sh):") heads each scriptlet.
    let header = |l: &str| l.ends_with(" scriptlet:") || l.contains(" scriptlet (using ");
    let section = |name: &str| -> String {
        let mut lines = scripts
            .lines()
            .skip_while(|l| !(header(l) && l.starts_with(&format!("{name} scriptlet"))));
        assert!(lines.next().is_some(), "no {name} scriptlet:\n{scripts}");
        lines
            .take_while(|l| !header(l))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let pre = section("preinstall");
    assert!(pre.contains("groupadd -r defender-bridge"), "{pre}");
    assert!(pre.contains("useradd -r -g defender-bridge"), "{pre}");
    let post = section("postinstall");
    for unit in ["defender-bridge.service", "'defender-bridge@*.service'"] {
        assert!(
            post.contains(&format!("systemctl try-restart {unit}")),
            "{post}"
        );
    }
    assert!(
        post.contains("\"$1\" -ge 2"),
        "try-restart on upgrade only: {post}"
    );
    assert!(
        post.contains("install -d -m 0700 -o defender-bridge"),
        "{post}"
    );
    for never in ["systemctl start", "systemctl enable", "preset"] {
        assert!(!post.contains(never), "{never:?} on install: {post}");
    }
    let preun = section("preuninstall");
    assert!(
        preun.contains("disable --now defender-bridge.service")
            && preun.contains("systemctl stop 'defender-bridge@*.service'"),
        "{preun}"
    );
    assert!(preun.contains("\"$1\" -eq 0"), "only on erase: {preun}");

    let requires = run("rpm", &["-qp", "--requires", rpm], "reads Requires");
    assert!(
        requires.lines().any(|l| l.starts_with("shadow-utils")),
        "{requires}"
    );
    let glibc: Vec<Vec<u32>> = requires
        .lines()
        .filter_map(|l| l.split("(GLIBC_").nth(1))
        .map(|v| version(v.split(')').next().unwrap_or_default()))
        .collect();
    assert!(!glibc.is_empty(), "no libc.so.6(GLIBC_…) in:\n{requires}");
    for v in &glibc {
        assert!(
            *v <= GLIBC_FLOOR.to_vec(),
            "rpm requires GLIBC {v:?}:\n{requires}"
        );
    }
}

/// "2.28" → [2, 28].
fn version(v: &str) -> Vec<u32> {
    v.split('.')
        .map(|n| n.parse().unwrap_or_else(|_| panic!("not a version: {v:?}")))
        .collect()
}

/// The GLIBC_ versions the binary needs, from its ELF version references (.gnu.version_r).
fn glibc_versions(binary: &Path) -> Vec<Vec<u32>> {
    let dump = run(
        "objdump",
        &["-p", path_str(binary)],
        "reads the binary's symbol versions",
    );
    let refs = dump
        .split("Version References:")
        .nth(1)
        .unwrap_or_else(|| panic!("no version references in objdump -p:\n{dump}"));
    refs.split_whitespace()
        .filter_map(|w| w.strip_prefix("GLIBC_"))
        // GLIBC_PRIVATE would be a bug of its own; it fails the parse below.
        .map(version)
        .collect()
}

#[test]
fn packaged_binary_runs_on_glibc_2_28_and_both_packages_hold_it() {
    let p = packages();
    let bin = p.root.join("usr/bin/defender-bridge");
    let versions = glibc_versions(&bin);
    assert!(
        !versions.is_empty(),
        "no GLIBC_ references: not a glibc binary?"
    );
    let max = versions.iter().max().unwrap();
    eprintln!("highest GLIBC_ version needed: {max:?}");
    assert!(
        *max <= GLIBC_FLOOR.to_vec(),
        "the packaged binary needs GLIBC {max:?}, above {GLIBC_FLOOR:?}"
    );
    // Stripped: release profile (cargo-generate-rpm does not strip).
    let syms = run("objdump", &["-h", path_str(&bin)], "lists sections");
    assert!(!syms.contains(".debug_info"), "the binary has debug info");
    assert!(!syms.contains(".symtab"), "the binary is not stripped");

    // The .rpm holds the same binary: its digest in the rpm header equals the .deb's file's.
    let sha = run("sha256sum", &[path_str(&bin)], "hashes the binary");
    let sha = sha.split_whitespace().next().unwrap();
    let dump = run(
        "rpm",
        &["-qp", "--dump", path_str(&p.rpm)],
        "dumps the .rpm",
    );
    let line = dump
        .lines()
        .find(|l| l.starts_with("/usr/bin/defender-bridge "))
        .unwrap_or_else(|| panic!("no binary in:\n{dump}"));
    assert!(
        line.contains(sha),
        "the .rpm's binary differs from the .deb's: {line}"
    );

    let version = Command::new(&bin).arg("--version").output().unwrap();
    assert!(version.status.success());
    assert_eq!(
        String::from_utf8_lossy(&version.stdout).trim(),
        format!("defender-bridge {}", env!("CARGO_PKG_VERSION"))
    );
}

/// The packaged unit `name` (one of UNITS) with ExecStart's binary resolvable here (it is not
/// installed), and the path to check: the unit's own, or for the template its instance
/// SHARD_INSTANCE, which systemd-analyze loads from the template beside it.
fn unit_copy(p: &Packages, name: &str) -> PathBuf {
    let unit = std::fs::read_to_string(p.root.join("usr/lib/systemd/system").join(name))
        .unwrap_or_else(|e| panic!("{name} in the .deb: {e}"));
    let bin = p.root.join("usr/bin/defender-bridge");
    let dir = manifest_dir().join("target/packaging-test/unit");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join(name),
        unit.replace("/usr/bin/defender-bridge", path_str(&bin)),
    )
    .unwrap();
    if name.ends_with("@.service") {
        dir.join(SHARD_INSTANCE)
    } else {
        dir.join(name)
    }
}

#[test]
fn unit_verifies() {
    let p = packages();
    for name in UNITS {
        let unit = unit_copy(p, name);
        // --man=no: the man page is not installed here (.ci/package-install-test.sh verifies
        // the installed unit with it).
        let out = Command::new("systemd-analyze")
            .args(["verify", "--man=no", path_str(&unit)])
            .output()
            .unwrap_or_else(|e| panic!("cannot run systemd-analyze ({e}): `bash {INSTALLER}`"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "systemd-analyze verify {name}: {stderr}"
        );
        // It exits 0 on unknown keys too; only lines about our units count.
        let ours: Vec<&str> = stderr
            .lines()
            .filter(|l| l.contains("defender-bridge"))
            .collect();
        assert!(ours.is_empty(), "systemd-analyze verify {name}: {ours:#?}");
    }
}

#[test]
fn unit_security_exposure_is_at_most_2() {
    let p = packages();
    for name in UNITS {
        let unit = unit_copy(p, name);
        // systemd 252 (Debian 12) has --offline: the unit file alone, no running systemd needed.
        let out = run(
            "systemd-analyze",
            &["security", "--offline=true", "--no-pager", path_str(&unit)],
            "rates the unit's sandbox",
        );
        // The instance's name for the template (defender-bridge@0of3.service).
        let checked = unit.file_name().unwrap().to_string_lossy().into_owned();
        let needle = format!("Overall exposure level for {checked}: ");
        let overall = out
            .lines()
            .find_map(|l| l.split(needle.as_str()).nth(1))
            .unwrap_or_else(|| panic!("no overall exposure in:\n{out}"));
        let score: f64 = overall
            .split_whitespace()
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("cannot read the score in {overall:?}"));
        eprintln!("systemd-analyze security {checked}: {overall}");
        assert!(score <= 2.0, "{checked}: exposure {score} > 2.0:\n{out}");
    }
}

#[test]
fn man_pages_and_completions_name_the_commands() {
    let p = packages();
    let man1 = p.root.join("usr/share/man/man1");
    let page = run(
        "gzip",
        &["-dc", path_str(&man1.join("defender-bridge.1.gz"))],
        "reads man pages",
    );
    assert!(
        page.starts_with(".ie") || page.contains(".TH"),
        "not roff: {page}"
    );
    // roff escapes '-' as "\-".
    for s in SUBCOMMANDS {
        let roff = s.replace('-', "\\-");
        assert!(
            page.contains(&format!("defender\\-bridge\\-{roff}(1)")),
            "the program's page does not point to {s}:\n{page}"
        );
    }
    assert!(
        !page.contains("generate"),
        "the hidden command is documented:\n{page}"
    );
    let check = run(
        "gzip",
        &["-dc", path_str(&man1.join("defender-bridge-check.1.gz"))],
        "reads man pages",
    );
    assert!(check.contains("\\-\\-online"), "{check}");
    let nested = run(
        "gzip",
        &[
            "-dc",
            path_str(&man1.join("defender-bridge-tenants-consent-url.1.gz")),
        ],
        "reads man pages",
    );
    assert!(nested.contains("\\-\\-client\\-id"), "{nested}");

    for file in [
        "usr/share/bash-completion/completions/defender-bridge",
        "usr/share/zsh/vendor-completions/_defender-bridge",
        "usr/share/fish/vendor_completions.d/defender-bridge.fish",
    ] {
        let text = std::fs::read_to_string(p.root.join(file)).expect(file);
        // fish writes options as `-l config`.
        for word in [
            "dead-letters",
            "send-test",
            "consent-url",
            "config",
            "online",
        ] {
            assert!(text.contains(word), "{file} lacks {word}");
        }
        assert!(
            !text.contains("complete-bash"),
            "{file} offers the hidden command"
        );
    }
}
