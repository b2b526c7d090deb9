//! The storage runtime on a real store with a recording `Fetcher`: no HTTP server, no network.

use super::*;
use crate::storage::sources::{Body, Fetcher, HttpSource};
use crate::store::{Store, StoreConfig};

/// Fails the first `failures` opens (transiently), then serves `image`; records every URL asked.
struct RecordingFetcher {
    failures: Mutex<u32>,
    image: Vec<u8>,
    asked: Mutex<Vec<String>>,
}

impl Fetcher for RecordingFetcher {
    fn open<'a>(
        &'a self,
        src: &'a HttpSource,
        _allow_private: bool,
    ) -> futures::future::BoxFuture<'a, Result<(Body, Option<u64>), StorageError>> {
        Box::pin(async move {
            self.asked.lock().unwrap().push(src.url.clone());
            let mut left = self.failures.lock().unwrap();
            if *left > 0 {
                *left -= 1;
                return Err(StorageError::Transient("GET: the server answered 503 Service Unavailable".into()));
            }
            let body: Body = Box::new(std::io::Cursor::new(self.image.clone()));
            Ok((body, Some(self.image.len() as u64)))
        })
    }
}

async fn dv_phase(store: &Store, name: &str) -> Value {
    store.get(&kinds::DATA_VOLUME, "default", name).await.unwrap().unwrap_or(Value::Null)
}

/// A DataVolume whose source fails twice: Running=False with the server's answer and a
/// restartCount, then Succeeded with the image in the claim's volume, the claim annotated done.
#[tokio::test(flavor = "multi_thread")]
async fn transient_failures_are_retried_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
    let store = Store::open(&StoreConfig::new(url)).await.unwrap();
    let mut image = vec![7u8; 8192];
    image[0] = 1;
    let fetcher =
        Arc::new(RecordingFetcher { failures: Mutex::new(2), image: image.clone(), asked: Mutex::new(vec![]) });
    let mut config = StorageConfig::new(dir.path());
    // Long enough for the poll below to see the error between tries.
    config.retry_base = Duration::from_millis(250);
    let _controllers =
        spawn_with(store.clone(), config, Arc::new(SystemVolumeTool), Arc::clone(&fetcher) as Arc<dyn Fetcher>)
            .await
            .unwrap();
    let dv = json!({"apiVersion": "cdi.kubevirt.io/v1beta1", "kind": "DataVolume",
        "metadata": {"name": "flaky", "namespace": "default"},
        "spec": {"source": {"http": {"url": "http://images.example/flaky.img"}},
                 "storage": {"resources": {"requests": {"storage": "1Mi"}}}}});
    crate::admission::create_admitted(&store, &kinds::DATA_VOLUME, dv, false).await.unwrap();

    let mut saw_error = false;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let done = loop {
        let d = dv_phase(&store, "flaky").await;
        let message = datavolume::running_message(&d).unwrap_or("").to_string();
        saw_error |= message.contains("503");
        if d.pointer("/status/phase").and_then(Value::as_str) == Some("Succeeded") {
            break d;
        }
        assert!(std::time::Instant::now() < deadline, "{d}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(saw_error, "the Running condition showed the server's answer while retrying");
    assert_eq!(done["status"]["restartCount"], 2);
    assert_eq!(fetcher.asked.lock().unwrap().len(), 3);
    let pvc = store.get(&kinds::PERSISTENT_VOLUME_CLAIM, "default", "flaky").await.unwrap().unwrap();
    assert_eq!(annotation(&pvc, ANN_POD_PHASE), Some("Succeeded"));
    let pv =
        store.get(&kinds::PERSISTENT_VOLUME, "", pvc["spec"]["volumeName"].as_str().unwrap()).await.unwrap().unwrap();
    let file = pv["spec"]["hostPath"]["path"].as_str().unwrap();
    let data = std::fs::read(file).unwrap();
    assert_eq!((data.len(), &data[..8192]), (1 << 20, &image[..]));
}
