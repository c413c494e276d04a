//! Multi-process tests of the transport's security model: pinning by
//! thumbprint, certificate validity, and the admin role.

mod support;

use std::time::Duration;

use support::{leader_and_voters, read, tern, Admin, Node, NodeSpec, Pki};
use tern_tests::{wait_until, Check, Harness};

fn short(t: &str) -> &str {
    &t[..12]
}

// Property: a coordinator whose certificate chains to the cluster CA but
// whose thumbprint is not pinned cannot take part: its Raft RPCs (votes of
// a cluster it tries to form with the real node) are refused during the TLS
// handshake, the refusal is logged with its thumbprint, and the real
// cluster's membership and leadership are unchanged. An expired admin
// certificate and a certificate from another CA are refused too, and a
// pinned coordinator certificate is not accepted as an administrator.
#[test]
fn unpinned_expired_and_non_admin_certificates_are_refused() {
    let h = Harness::new("unpinned_expired_and_non_admin_certificates_are_refused");
    let outcome = (|| -> anyhow::Result<()> {
        let pki = Pki::new(&h)?;
        pki.admin("ops", &[])?;
        pki.admin(
            "old",
            &[
                "--not-before",
                "2020-01-01T00:00:00Z",
                "--not-after",
                "2020-02-01T00:00:00Z",
            ],
        )?;
        let admin = Admin::new(&pki, "ops");
        let mut n1 = Node::new(&h, &pki, 1, "eu")?;
        n1.start(
            &h,
            &pki,
            &NodeSpec {
                initialize: true,
                ..NodeSpec::new(1, "eu")
            },
        )?;
        let addr = n1.grpc();
        wait_until(
            "node 1 to lead",
            Duration::from_secs(20),
            Duration::from_millis(100),
            || match admin.status(&addr) {
                Ok(s) => Check::ready_or(leader_and_voters(&s).0, s),
                Err(e) => Check::pending(e),
            },
        )?;
        let before = admin.status(&addr)?;

        // A rogue coordinator: valid chain, not pinned. It initializes a
        // cluster that lists node 1 and campaigns for votes.
        let mut rogue = Node::new(&h, &pki, 9, "rogue")?;
        let spec = NodeSpec {
            initialize: true,
            bootstrap: vec![(&n1, addr.clone())],
            ..NodeSpec::new(9, "rogue")
        };
        rogue.start(&h, &pki, &spec)?;
        let log = n1.process().log_path().to_path_buf();
        let rogue_tp = rogue.thumbprint.clone();
        wait_until(
            "node 1 to log the refused rogue handshake",
            Duration::from_secs(30),
            Duration::from_millis(100),
            || {
                let text = read(&log);
                if text.contains(short(&rogue_tp)) && text.to_lowercase().contains("refus") {
                    Check::Ready(())
                } else {
                    Check::pending("no refusal with the rogue's thumbprint logged yet")
                }
            },
        )?;
        let after = admin.status(&addr)?;
        assert_eq!(
            after["term"], before["term"],
            "the rogue's votes must not move node 1's term"
        );
        assert_eq!(after["leader"], before["leader"]);
        assert_eq!(
            after["members"].as_array().map(|a| a.len()),
            Some(1),
            "the rogue must not become a member: {after}"
        );
        let rogue_status = Admin::new(&pki, "ops").status(&rogue.grpc())?;
        assert!(
            rogue_status["leader"].is_null(),
            "the rogue cannot win an election it needs node 1 for: {rogue_status}"
        );

        // An expired admin certificate is refused.
        let old = Admin::new(&pki, "old");
        let out = old.cmd(&addr).args(["status"]).output()?;
        assert!(!out.status.success(), "expired admin certificate accepted");

        // A pinned coordinator certificate is not an administrator.
        let as_node = Admin {
            ca: pki.dir.join("ca.pem"),
            cert: pki.cert("eu"),
            key: pki.key("eu"),
        };
        let out = as_node.cmd(&addr).args(["status"]).output()?;
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("PermissionDenied"),
            "coordinator cert used as admin: {err}"
        );

        // An admin certificate from another CA is refused.
        let other_dir = h.path("other-pki");
        support::run_ok(tern().args(["pki", "init", "--dir"]).arg(&other_dir))?;
        support::run_ok(
            tern()
                .args(["pki", "admin", "--dir"])
                .arg(&other_dir)
                .args(["--name", "ops"]),
        )?;
        let foreign = Admin {
            ca: pki.dir.join("ca.pem"),
            cert: other_dir.join("ops.pem"),
            key: other_dir.join("ops.key"),
        };
        let out = foreign.cmd(&addr).args(["status"]).output()?;
        assert!(
            !out.status.success(),
            "admin certificate from another CA accepted"
        );
        // The good administrator still gets through.
        admin.status(&addr)?;
        Ok(())
    })();
    h.conclude(outcome).expect("test failed");
}
