//! The state directory's checkpoint files when more than one saver writes them (issue 8 §6).

use std::path::Path;

use chrono::Utc;
use defender_bridge::source::Checkpoint;

/// Two savers of one checkpoint file in one process (two pollers of one tenant, before the
/// config refused that) each use their own temp file: every save succeeds, and what is left is
/// a whole checkpoint and no temp file. With one temp name per process, one saver's rename took
/// the other's temp file away and its save failed.
#[test]
fn concurrent_saves_of_one_checkpoint_never_share_a_temp_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = Checkpoint::path(dir.path(), "contoso.onmicrosoft.com", "graph");
    std::thread::scope(|scope| {
        let savers: Vec<_> = (0..2)
            .map(|n| {
                let path = &path;
                scope.spawn(move || {
                    let mut cp = Checkpoint::fresh("contoso.onmicrosoft.com", "graph", Utc::now());
                    for i in 0..150 {
                        cp.seen.insert((Utc::now(), format!("saver{n}-{i}")));
                        cp.save(path)?;
                    }
                    Ok::<_, defender_bridge::source::checkpoint::CheckpointError>(())
                })
            })
            .collect();
        for s in savers {
            s.join()
                .expect("saver thread")
                .expect("every save succeeds");
        }
    });
    let cp = Checkpoint::load(&path).expect("loads").expect("present");
    assert_eq!(cp.seen.len(), 150);
    assert_eq!(
        names(dir.path()),
        vec!["contoso.onmicrosoft.com-graph.json"]
    );
}

/// Leftover temp files of interrupted saves go; the checkpoints and other files stay.
#[test]
fn leftover_temp_files_are_removed_and_nothing_else() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = Checkpoint::path(dir.path(), "t", "mde");
    Checkpoint::fresh("t", "mde", Utc::now())
        .save(&path)
        .expect("save");
    for name in ["t-mde.json.tmp4242", "t-graph.json.tmp17.3", "notes.txt"] {
        std::fs::write(dir.path().join(name), b"{ half a chec").expect("write");
    }
    let mut removed = Checkpoint::remove_temp_files(dir.path()).expect("cleans");
    removed.sort();
    assert_eq!(
        removed,
        vec![
            dir.path().join("t-graph.json.tmp17.3"),
            dir.path().join("t-mde.json.tmp4242")
        ]
    );
    assert_eq!(names(dir.path()), vec!["notes.txt", "t-mde.json"]);
    assert!(Checkpoint::load(&path).expect("loads").is_some());
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}
