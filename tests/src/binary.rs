//! Locating the workspace binaries (`tern`, `tern-shim`) a test runs.

use std::path::{Path, PathBuf};

/// Environment variable naming the directory that holds the binaries under
/// test; overrides the default (`target/<profile>/`).
pub const BIN_DIR_ENV: &str = "TERN_BIN_DIR";

/// The path of workspace binary `name` (`"tern"`, `"tern-shim"`).
///
/// Looks in `TERN_BIN_DIR` if set, else in `target/<profile>/`, the parent
/// of the `deps/` directory the running test executable lives in. Panics with
/// the command that builds the binaries when it is missing: cargo does not
/// build other packages' binaries for `cargo test -p tern-tests`.
pub fn binary(name: &str) -> PathBuf {
    try_binary(name).unwrap_or_else(|message| panic!("{message}"))
}

/// Like [`binary`], returning the explanation instead of panicking.
pub fn try_binary(name: &str) -> Result<PathBuf, String> {
    let dir = match std::env::var_os(BIN_DIR_ENV) {
        Some(dir) => PathBuf::from(dir),
        None => {
            let exe = std::env::current_exe()
                .map_err(|e| format!("cannot locate the running test executable: {e}"))?;
            default_bin_dir(&exe)
        }
    };
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "binary `{name}` not found at {}; build it first with `cargo build --workspace --bins` \
             (same profile as the tests), or point {BIN_DIR_ENV} at the directory holding it",
            path.display()
        ))
    }
}

/// `target/<profile>/deps/<test-exe>` → `target/<profile>/`; an executable
/// outside a `deps/` directory → its own directory.
fn default_bin_dir(exe: &Path) -> PathBuf {
    let dir = exe.parent().unwrap_or_else(|| Path::new("."));
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.parent().unwrap_or(dir).to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Property: test executables in target/<profile>/deps look for binaries in target/<profile>.
    #[test]
    fn default_dir_is_profile_dir() {
        assert_eq!(
            default_bin_dir(Path::new("/w/target/debug/deps/failover-0123")),
            PathBuf::from("/w/target/debug")
        );
        assert_eq!(
            default_bin_dir(Path::new("/w/target/debug/tool")),
            PathBuf::from("/w/target/debug")
        );
    }

    // Property: a missing binary is reported with the command that builds it.
    #[test]
    fn missing_binary_says_how_to_build() {
        let err = try_binary("no-such-tern-binary").unwrap_err();
        assert!(err.contains("cargo build --workspace --bins"), "{err}");
    }
}
