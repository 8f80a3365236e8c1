//! Task events for containerd, published in the order they were queued by
//! one thread. Queueing never blocks, so callers queue while holding the
//! pod's lock, and that lock's order is the order containerd sees (a task's
//! `/tasks/start` always before its `/tasks/exit`).

use std::sync::mpsc::{self, Receiver, Sender};
use std::thread;
use std::time::Duration;

use containerd_shim::protos::protobuf::MessageDyn;
use containerd_shim::protos::ttrpc::context;
use containerd_shim::publisher::RemotePublisher;

/// containerd answers in microseconds; this only bounds a stuck daemon.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Event {
    pub topic: &'static str,
    pub message: Box<dyn MessageDyn>,
}

/// Where events go: containerd, or a channel in tests.
pub trait Sink: Send + 'static {
    fn publish(&self, namespace: &str, event: Event);
}

impl Sink for RemotePublisher {
    fn publish(&self, namespace: &str, event: Event) {
        let topic = event.topic;
        let result = RemotePublisher::publish(
            self,
            context::with_duration(PUBLISH_TIMEOUT),
            topic,
            namespace,
            event.message,
        );
        if let Err(e) = result {
            log::error!("publishing {topic}: {e}");
        }
    }
}

impl Sink for Sender<(String, Event)> {
    fn publish(&self, namespace: &str, event: Event) {
        let _ = self.send((namespace.to_owned(), event));
    }
}

/// The queue's sending end.
#[derive(Clone)]
pub struct EventQueue {
    namespace: String,
    tx: Sender<Event>,
}

impl EventQueue {
    /// Starts the publishing thread.
    pub fn start(namespace: &str, sink: impl Sink) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel();
        let ns = namespace.to_owned();
        thread::Builder::new()
            .name("events".into())
            .spawn(move || publish_all(&ns, &rx, &sink))?;
        Ok(EventQueue {
            namespace: namespace.to_owned(),
            tx,
        })
    }

    pub fn send(&self, topic: &'static str, message: impl MessageDyn) {
        log::debug!("event {topic}");
        let _ = self.tx.send(Event {
            topic,
            message: Box::new(message),
        });
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }
}

fn publish_all(namespace: &str, rx: &Receiver<Event>, sink: &impl Sink) {
    for event in rx.iter() {
        sink.publish(namespace, event);
    }
}
