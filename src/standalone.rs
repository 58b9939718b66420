//! Runs services in this process: all three on the embedded bus and store (`imgate` with no
//! subcommand), or one of them for a cluster. Tests start the same [`Gateway`] on port 0.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use imgate_comet::CometHandle;
use imgate_job::JobHandle;
use imgate_logic::LogicHandle;
use imgate_shared::bus::{self, BusConsumer, BusProducer};
use imgate_shared::config::Config;
use imgate_shared::store::{EmbeddedStore, Store, StoreTtl};

/// comet, logic and job running in this process.
pub struct Gateway {
    runtime: tokio::runtime::Runtime,
    logic: Option<LogicHandle>,
    job: Option<JobHandle>,
    comet: Option<CometHandle>,
}

fn embedded_store(config: &Config) -> Arc<dyn Store> {
    Arc::new(EmbeddedStore::new(StoreTtl {
        session: config.store.session_ttl,
        online: config.store.online_ttl,
    }))
}

fn embedded_bus(config: &Config) -> (Arc<dyn BusProducer>, Box<dyn BusConsumer>) {
    let (producer, consumer) = bus::embedded(config.bus.capacity, config.bus.publish_timeout);
    (Arc::new(producer), Box::new(consumer))
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("imgate-tokio")
        .enable_all()
        .build()
        .context("starting the tokio runtime")
}

impl Gateway {
    /// Starts logic, job and comet on the embedded bus and store, and returns once job has a
    /// link to the comet, so a push sent after this returns reaches connected clients.
    pub fn start(mut config: Config) -> anyhow::Result<Gateway> {
        let runtime = runtime()?;
        let store = embedded_store(&config);
        let (producer, consumer) = embedded_bus(&config);
        let logic = runtime
            .block_on(imgate_logic::start(&config, store.clone(), producer))
            .context("starting logic")?;
        let job = runtime
            .block_on(imgate_job::start(&config, store, consumer))
            .context("starting job")?;
        // The comet of this process talks to this logic, wherever its link port landed.
        config.comet.logic_addrs = vec![logic.link_addr().to_string()];
        let comet = imgate_comet::start(&config.comet).context("starting comet")?;
        let gateway = Gateway {
            runtime,
            logic: Some(logic),
            job: Some(job),
            comet: Some(comet),
        };
        gateway.wait_for_links(1, Duration::from_secs(10))?;
        Ok(gateway)
    }

    /// Starts logic, with job beside it: the embedded bus only connects the two within one
    /// process. Comets join over the cluster link (`imgate comet --join`).
    pub fn start_logic(config: Config) -> anyhow::Result<Gateway> {
        let runtime = runtime()?;
        let store = embedded_store(&config);
        let (producer, consumer) = embedded_bus(&config);
        let logic = runtime
            .block_on(imgate_logic::start(&config, store.clone(), producer))
            .context("starting logic")?;
        let job = runtime
            .block_on(imgate_job::start(&config, store, consumer))
            .context("starting job")?;
        Ok(Gateway {
            runtime,
            logic: Some(logic),
            job: Some(job),
            comet: None,
        })
    }

    /// Starts a comet alone; it joins the logic at `comet.logic_addrs`.
    pub fn start_comet(config: Config) -> anyhow::Result<Gateway> {
        let runtime = runtime()?;
        let comet = imgate_comet::start(&config.comet).context("starting comet")?;
        Ok(Gateway {
            runtime,
            logic: None,
            job: None,
            comet: Some(comet),
        })
    }

    /// Waits until job holds links to at least `comets` comets.
    pub fn wait_for_links(&self, comets: usize, timeout: Duration) -> anyhow::Result<()> {
        let Some(job) = &self.job else {
            return Ok(());
        };
        let deadline = Instant::now() + timeout;
        while job.comet_count() < comets {
            if Instant::now() > deadline {
                bail!(
                    "job reached {} of {comets} comets within {timeout:?}",
                    job.comet_count()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// The comet's first TCP listener.
    pub fn tcp_addr(&self) -> SocketAddr {
        self.comet().tcp_addrs()[0]
    }

    /// The comet's first WebSocket listener.
    pub fn ws_addr(&self) -> SocketAddr {
        self.comet().ws_addrs()[0]
    }

    /// logic's HTTP API.
    pub fn http_addr(&self) -> SocketAddr {
        self.logic
            .as_ref()
            .expect("logic runs in this gateway")
            .http_addr()
    }

    /// logic's cluster-link address (what `imgate comet --join` takes).
    pub fn logic_link_addr(&self) -> SocketAddr {
        self.logic
            .as_ref()
            .expect("logic runs in this gateway")
            .link_addr()
    }

    /// The comet of this process.
    pub fn comet(&self) -> &CometHandle {
        self.comet.as_ref().expect("a comet runs in this gateway")
    }

    /// job's counters.
    pub fn job(&self) -> Option<&JobHandle> {
        self.job.as_ref()
    }

    /// A line per running service, for the start-up log.
    pub fn describe(&self) -> Vec<String> {
        let mut lines = Vec::new();
        if let Some(c) = &self.comet {
            lines.push(format!(
                "comet {} tcp {:?} ws {:?} link {}",
                c.id(),
                c.tcp_addrs(),
                c.ws_addrs(),
                c.link_addr()
            ));
        }
        if let Some(l) = &self.logic {
            lines.push(format!(
                "logic http {} link {}",
                l.http_addr(),
                l.link_addr()
            ));
        }
        lines
    }

    /// Stops comet first (clients go), then job (pending room batches flush), then logic.
    pub fn shutdown(mut self) {
        if let Some(comet) = self.comet.take() {
            comet.shutdown();
        }
        if let Some(job) = self.job.take() {
            self.runtime.block_on(job.shutdown());
        }
        if let Some(logic) = self.logic.take() {
            self.runtime.block_on(logic.shutdown());
        }
        self.runtime.shutdown_timeout(Duration::from_secs(2));
    }
}
