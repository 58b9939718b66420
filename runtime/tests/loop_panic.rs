//! A panic that leaves a runtime thread's loop ends the process when the thread was started
//! with `exit_on_loop_panic`: a supervisor restarts a process that exits, but not one whose
//! other threads go on serving while this one's sockets hang. Run in a child process (this
//! test binary, started again with an environment variable), whose exit status is checked.

use std::process::Command;
use std::time::Duration;

use imgate_runtime::Builder;

const CHILD: &str = "IMGATE_RUNTIME_LOOP_PANIC_CHILD";

#[test]
fn a_panic_in_the_loop_ends_the_process() {
    if std::env::var_os(CHILD).is_some() {
        let thread = Builder::new("panicking-loop")
            .exit_on_loop_panic(true)
            .spawn(|_stats| async {
                imgate_runtime::time::sleep(Duration::from_millis(5)).await;
                panic!("injected into the loop by the test");
            })
            .expect("the runtime thread starts");
        // The process ends from the runtime thread; this join never returns.
        let _ = thread.join();
        std::thread::sleep(Duration::from_secs(30));
        unreachable!("the process should have ended");
    }
    let child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "a_panic_in_the_loop_ends_the_process",
            "--nocapture",
        ])
        .env(CHILD, "1")
        .output()
        .expect("the test binary starts again");
    let stderr = String::from_utf8_lossy(&child.stderr);
    assert_eq!(child.status.code(), Some(101), "{stderr}");
    assert!(
        stderr.contains("injected into the loop by the test"),
        "the panic's message is in its output: {stderr}"
    );
}

#[test]
fn a_panic_in_a_task_leaves_the_thread_running() {
    let handle = Builder::new("panicking-task")
        .exit_on_loop_panic(true)
        .spawn(|stats| async move {
            imgate_runtime::spawn_local(async { panic!("injected into a task by the test") })
                .detach();
            imgate_runtime::time::sleep(Duration::from_millis(20)).await;
            stats.task_panics()
        })
        .expect("the runtime thread starts");
    assert_eq!(
        handle.join().expect("the thread ended normally").unwrap(),
        1
    );
}
