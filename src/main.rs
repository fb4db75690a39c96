//! The `chatbus` binary: parse flags, start the server, stop it on SIGINT/SIGTERM.

use chatbus::config::Config;
use chatbus::server::Server;
use clap::Parser;
use std::io::IsTerminal;
use std::process::ExitCode;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let config = match Config::try_parse() {
        Ok(c) => c,
        Err(e) if !e.use_stderr() => {
            // --help, --version
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            let text = e.to_string();
            let line = text.lines().next().unwrap_or("invalid arguments");
            eprintln!("chatbus: {}", line.trim_start_matches("error: "));
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("chatbus=info")),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, never in a log file or a pipe.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(config.worker_threads())
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("chatbus: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match chatbus::listener::raise_open_files_limit() {
        Ok(n) => tracing::debug!(open_files = n, "open-file limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
    }
    let code = runtime.block_on(async {
        // Before anything listens: a SIGTERM that arrives as soon as the port answers must stop
        // chatbus gracefully, never kill it with the default action.
        let mut stop = match StopSignals::new() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("chatbus: cannot install the signal handlers: {e}");
                return ExitCode::FAILURE;
            }
        };
        // A signal while starting (waiting for the store, replaying a spill) ends the start:
        // nothing has been acknowledged yet, and a spill stays until a replay commits it.
        let server = tokio::select! {
            started = Server::start(&config) => match started {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("chatbus: {e}");
                    return ExitCode::FAILURE;
                }
            },
            _ = stop.recv() => {
                eprintln!("chatbus: stopped while starting, before it served a request");
                return ExitCode::FAILURE;
            }
        };
        tracing::info!(addr = %server.local_addr(), "chatbus listening");
        stop.recv().await;
        tracing::info!("stopping: finishing requests in flight and writing everything to the store");
        let report = server.shutdown().await;
        match (report.spilled, report.file, report.lost) {
            (0, _, None) => ExitCode::SUCCESS,
            (n, Some(file), None) => {
                eprintln!(
                    "chatbus: {n} writes could not reach the store before --stop-timeout; they are in {} and the next \
                     start with the same --spill-dir replays them",
                    file.display()
                );
                ExitCode::from(3)
            }
            (n, _, lost) => {
                eprintln!("chatbus: {n} writes could not be written: {}", lost.unwrap_or_default());
                ExitCode::FAILURE
            }
        }
    });
    // Not waiting for blocking tasks: after a graceful stop there are none left, and after a
    // signal during start-up the store's connect retries or a spill replay just end with the
    // process (a replay is one transaction, and its file is deleted only once it committed).
    runtime.shutdown_background();
    code
}

/// SIGTERM and SIGINT, registered up front.
struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn new() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self { term: signal(SignalKind::terminate())?, int: signal(SignalKind::interrupt())? })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}
