//! lapin's I/O loop runs as a task on the connection's runtime
//! (patches/lapin), not on a thread of its own that every frame in or out
//! would wake.

use crate::support::TestBroker;

#[tokio::test]
async fn an_open_connection_has_no_io_thread_of_its_own() {
    let broker = TestBroker::new().await;
    // The connection works: a publish is confirmed through the loop.
    broker
        .publish_raw(b"{}", crate::support::json_properties())
        .await;
    let threads: Vec<String> = std::fs::read_dir("/proc/self/task")
        .expect("/proc/self/task")
        .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_owned())
        .collect();
    assert!(!threads.is_empty());
    assert!(
        !threads.iter().any(|name| name.starts_with("lapin-io")),
        "{threads:?}"
    );
    assert!(broker.connection.status().connected());
}
