//! Runs services in this process: all three (`imgate` with no subcommand), or some of them for
//! a cluster, on the bus and store the configuration names. Tests start the same [`Gateway`]
//! on port 0.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use imgate_bus::kafka::{KafkaConsumer, KafkaProducer};
use imgate_bus::nats::{NatsConsumer, NatsProducer};
use imgate_bus::{BusConsumer, BusProducer};
use imgate_comet::CometHandle;
use imgate_job::JobHandle;
use imgate_logic::ops::Ops;
use imgate_logic::LogicHandle;
use imgate_shared::config::{BusConfig, Config, StoreBackend, StoreConfig};
use imgate_store::redis::RedisStore;
use imgate_store::{embedded, Stores};

/// comet, logic and job running in this process.
pub struct Gateway {
    runtime: tokio::runtime::Runtime,
    logic: Option<LogicHandle>,
    job: Option<JobHandle>,
    comet: Option<CometHandle>,
    /// Cluster mode with `logic.events_url`, in the process running job: delivers the events
    /// logics published to the bus.
    events: Option<imgate_logic::EventsConsumer>,
    /// Metrics, readiness and status of every service here: on logic's HTTP listener, or on
    /// `metrics_addr` in a comet or job process.
    ops: Option<Arc<Ops>>,
    metrics: Option<(SocketAddr, tokio::task::JoinHandle<()>)>,
}

/// Which services a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Services {
    pub comet: bool,
    pub logic: bool,
    pub job: bool,
}

impl Services {
    /// Everything in one process (`imgate` with no subcommand).
    pub const ALL: Services = Services {
        comet: true,
        logic: true,
        job: true,
    };
}

async fn connect_store(config: &StoreConfig) -> anyhow::Result<Stores> {
    Ok(match &config.backend {
        StoreBackend::Redis(redis) => Stores::all_in(Arc::new(
            RedisStore::connect(redis, config)
                .await
                .context("connecting to Redis")?,
        )),
        StoreBackend::Embedded => embedded::stores(config),
    })
}

/// The bus ends this process needs: the embedded bus only exists within one process, so its
/// two ends are made together; Kafka and NATS ends are made independently.
async fn connect_bus(
    config: &BusConfig,
    producer: bool,
    consumer: bool,
) -> anyhow::Result<(Option<Arc<dyn BusProducer>>, Option<Box<dyn BusConsumer>>)> {
    match config {
        BusConfig::Kafka(kafka) => {
            let p: Option<Arc<dyn BusProducer>> = if producer {
                Some(Arc::new(
                    KafkaProducer::connect(kafka)
                        .await
                        .context("connecting the Kafka producer")?,
                ))
            } else {
                None
            };
            let c: Option<Box<dyn BusConsumer>> = if consumer {
                Some(Box::new(
                    KafkaConsumer::connect(kafka).context("connecting the Kafka consumer")?,
                ))
            } else {
                None
            };
            Ok((p, c))
        }
        BusConfig::Nats(nats) => {
            let p: Option<Arc<dyn BusProducer>> = if producer {
                Some(Arc::new(
                    NatsProducer::connect(nats)
                        .await
                        .context("connecting the NATS producer")?,
                ))
            } else {
                None
            };
            let c: Option<Box<dyn BusConsumer>> = if consumer {
                Some(Box::new(
                    NatsConsumer::connect(nats)
                        .await
                        .context("connecting the NATS consumer")?,
                ))
            } else {
                None
            };
            Ok((p, c))
        }
        BusConfig::Embedded(embedded) => {
            if producer != consumer {
                bail!(
                    "with bus.kind = \"embedded\" logic and job must run in the same process \
                     (use `imgate logic`, which runs job beside it, or bus.kind = \"kafka\" or \
                     \"nats\")"
                );
            }
            let (p, c) = imgate_bus::embedded(embedded.capacity, embedded.publish_timeout);
            Ok((Some(Arc::new(p)), Some(Box::new(c))))
        }
    }
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
    /// Starts logic, job and comet in this process and returns once job has a link to the
    /// comet, so a push sent after this returns reaches connected clients.
    pub fn start(config: Config) -> anyhow::Result<Gateway> {
        let gateway = Self::run(config, Services::ALL)?;
        gateway.wait_for_links(1, Duration::from_secs(10))?;
        Ok(gateway)
    }

    /// Starts the chosen services. A comet started beside logic talks to that logic,
    /// wherever its link port landed.
    pub fn run(mut config: Config, services: Services) -> anyhow::Result<Gateway> {
        let runtime = runtime()?;
        let needs_store = services.logic || services.job;
        let stores = if needs_store {
            Some(runtime.block_on(connect_store(&config.store))?)
        } else {
            None
        };
        let (producer, consumer) = if needs_store {
            runtime.block_on(connect_bus(&config.bus, services.logic, services.job))?
        } else {
            (None, None)
        };
        // Cluster mode: events for the business travel on their own topic (stream), so a logic
        // that dies has acknowledged none it could lose.
        let events_bus = config
            .bus
            .events()
            .filter(|_| needs_store && config.logic.events_url.is_some());
        let (events_producer, events_consumer) = match &events_bus {
            Some(bus) => runtime
                .block_on(connect_bus(bus, services.logic, services.job))
                .context("connecting the events topic")?,
            None => (None, None),
        };
        let mut gateway = Gateway {
            runtime,
            logic: None,
            job: None,
            comet: None,
            events: None,
            ops: None,
            metrics: None,
        };
        if let (Some(stores), Some(producer)) = (&stores, producer) {
            let logic = gateway
                .runtime
                .block_on(imgate_logic::start_with_events_bus(
                    &config,
                    stores.clone(),
                    producer,
                    events_producer,
                ))
                .context("starting logic")?;
            config.comet.logic_addrs = vec![logic.link_addr().to_string()];
            gateway.logic = Some(logic);
        }
        let registry = stores.as_ref().map(|s| s.registry.clone());
        if let (Some(stores), Some(consumer)) = (stores, consumer) {
            let job =
                gateway
                    .runtime
                    .block_on(imgate_job::start(&config, stores.registry, consumer));
            gateway.job = Some(job);
        }
        if let Some(consumer) = events_consumer {
            let _guard = gateway.runtime.enter();
            gateway.events = Some(
                imgate_logic::consume_events(&config, consumer)
                    .context("starting the events poster")?,
            );
        }
        if services.comet {
            gateway.comet = Some(imgate_comet::start(&config.comet).context("starting comet")?);
        }
        gateway.start_ops(&config, services, registry)?;
        Ok(gateway)
    }

    /// Gathers the services' metrics, readiness checks and status figures: onto logic's HTTP
    /// listener when logic runs here, else onto the comet's or job's `metrics_bind` if set.
    fn start_ops(
        &mut self,
        config: &Config,
        services: Services,
        registry: Option<Arc<dyn imgate_store::RegistryStore>>,
    ) -> anyhow::Result<()> {
        let bind = match (&self.logic, services.comet, services.job) {
            (Some(_), _, _) => None,
            (None, true, _) => config.comet.metrics_bind,
            (None, false, true) => config.job.metrics_bind,
            (None, false, false) => None,
        };
        let ops = match &self.logic {
            Some(logic) => logic.ops(),
            None if bind.is_some() => Ops::new(config.auth.api_key.clone()),
            None => return Ok(()),
        };
        if let Some(comet) = &self.comet {
            ops.add_collector(comet.collector());
            let stopped = comet.stopped_shards_probe();
            ops.add_check(
                "shards",
                Arc::new(move || {
                    let stopped = stopped();
                    Box::pin(async move {
                        if stopped == 0 {
                            Ok(())
                        } else {
                            Err(format!("{stopped} comet shard(s) stopped"))
                        }
                    })
                }),
            );
            let linked = comet.logic_link_probe();
            ops.add_check(
                "logic",
                Arc::new(move || {
                    let up = linked();
                    Box::pin(async move {
                        if up {
                            Ok(())
                        } else {
                            Err("a comet shard has no link to logic".to_string())
                        }
                    })
                }),
            );
            let status = comet.status_source();
            ops.add_status(
                "comets",
                Arc::new(move || {
                    let part = serde_json::json!([status()]);
                    Box::pin(async move { part })
                }),
            );
        }
        if let (Some(job), None, Some(registry)) = (&self.job, &self.logic, registry) {
            // logic checks the store and the bus when it runs here; a job process checks them
            // itself (the bus: a broker's round trip, bounded).
            ops.add_check("store", imgate_logic::ops::store_check(registry));
            if let Some(probe) = job.bus_probe() {
                ops.add_check("bus", probe);
            }
        }
        if let Some(events) = &self.events {
            ops.add_collector(events.collector());
        }
        if let Some(job) = &self.job {
            ops.add_collector(job.collector());
            let counters = job.counters();
            ops.add_status(
                "job",
                Arc::new(move || {
                    let s = counters();
                    Box::pin(async move {
                        serde_json::json!({
                            "comet_links": s.connected,
                            "room_batches": s.room_batches,
                            "room_budget": s.room_budget_permille as f64 / 1000.0,
                            "busiest_shard_busy": s.busiest_shard_permille as f64 / 1000.0,
                        })
                    })
                }),
            );
            let counters = job.counters();
            ops.add_check(
                "job",
                Arc::new(move || {
                    let links = counters().connected;
                    Box::pin(async move {
                        if links > 0 {
                            Ok(())
                        } else {
                            Err("job has no link to a comet".to_string())
                        }
                    })
                }),
            );
        }
        if let Some(addr) = bind {
            let served = self
                .runtime
                .block_on(imgate_logic::ops::serve(addr, ops.clone()))
                .with_context(|| format!("binding the metrics listener on {addr}"))?;
            self.metrics = Some(served);
        }
        self.ops = Some(ops);
        Ok(())
    }

    /// Where a comet or job process serves `/metrics` (its `metrics_bind`, port 0 resolved).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().map(|(addr, _)| *addr)
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

    /// logic's counters since start.
    pub fn logic_stats(&self) -> imgate_logic::LogicStats {
        self.logic
            .as_ref()
            .expect("logic runs in this gateway")
            .stats()
    }

    /// job's counters.
    pub fn job(&self) -> Option<&JobHandle> {
        self.job.as_ref()
    }

    /// A line per running service, for the start-up log.
    pub fn describe(&self) -> Vec<String> {
        let mut lines = Vec::new();
        if let Some(c) = &self.comet {
            let mut line = format!(
                "comet {} tcp {:?} ws {:?}",
                c.id(),
                c.tcp_addrs(),
                c.ws_addrs()
            );
            if !c.wss_addrs().is_empty() {
                line += &format!(" wss {:?}", c.wss_addrs());
            }
            if !c.tcp_tls_addrs().is_empty() {
                line += &format!(" tcp+tls {:?}", c.tcp_tls_addrs());
            }
            line += &format!(" link {}", c.link_addr());
            lines.push(line);
        }
        if let Some(l) = &self.logic {
            lines.push(format!(
                "logic http {} link {}",
                l.http_addr(),
                l.link_addr()
            ));
        }
        if let Some(addr) = self.metrics_addr() {
            lines.push(format!("metrics, healthz, readyz on http://{addr}"));
        }
        lines
    }

    /// Stops comet first (clients go), then job (pending room batches flush), then logic.
    pub fn shutdown(mut self) {
        if let Some((_, task)) = self.metrics.take() {
            task.abort();
        }
        if let Some(comet) = self.comet.take() {
            comet.shutdown();
        }
        if let Some(job) = self.job.take() {
            self.runtime.block_on(job.shutdown());
        }
        if let Some(events) = self.events.take() {
            self.runtime.block_on(events.shutdown());
        }
        if let Some(logic) = self.logic.take() {
            self.runtime.block_on(logic.shutdown());
        }
        self.runtime.shutdown_timeout(Duration::from_secs(2));
    }
}
