//! Throughput of a TCP sink: ~1 KB syslog records (RFC 5424 header + CEF), LF framing, to a
//! local receiver task that reads and discards. Issue 3 target: >= 200,000 records/s on 2 cores.
//!
//! cargo bench --bench tcp_send
//! The median is in target/criterion/tcp_send/lf_1k/new/estimates.json ("median").

use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use defender_bridge::sink::{Framing, SinkConfig};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;

const RECORDS: usize = 100_000;

fn record(i: usize) -> Bytes {
    let mut s = format!(
        "<134>1 2026-11-29T00:00:00.{:06}Z bridge-01 defender-bridge - alert - CEF:0|Microsoft|Microsoft Defender for Endpoint|1.0|WindowsDefenderAv|Suspicious PowerShell command line|8|rt=1764374400000 externalId=da638{i:010} dvchost=host-1.contoso.local suser=CONTOSO\\\\alice msg=",
        i % 1_000_000
    );
    while s.len() < 1000 {
        s.push_str("A process ran a PowerShell command with an encoded script\\=payload. ");
    }
    s.truncate(1000);
    Bytes::from(s)
}

fn tcp_send(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let records: Vec<Bytes> = (0..1024).map(record).collect();

    let mut group = c.benchmark_group("tcp_send");
    group
        .throughput(Throughput::Elements(RECORDS as u64))
        .sample_size(10)
        .measurement_time(Duration::from_secs(12));
    for framing in [Framing::Lf, Framing::OctetCounting] {
        let name = match framing {
            Framing::Lf => "lf_1k",
            Framing::OctetCounting => "octet_counting_1k",
        };
        let sink = rt.block_on(async {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("addr");
            tokio::spawn(async move {
                let (mut conn, _) = listener.accept().await.expect("accept");
                let mut buf = vec![0u8; 256 * 1024];
                while conn.read(&mut buf).await.map(|n| n > 0).unwrap_or(false) {}
            });
            let mut cfg = SinkConfig::new(format!("tcp://{addr}").parse().expect("url"));
            cfg.framing = Some(framing);
            cfg.build().expect("sink")
        });
        group.bench_function(name, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = Instant::now();
                    for _ in 0..iters {
                        for i in 0..RECORDS {
                            sink.send(records[i % records.len()].clone())
                                .await
                                .expect("send");
                        }
                        sink.flush(Duration::from_secs(60)).await.expect("flush");
                    }
                    start.elapsed()
                })
            })
        });
        rt.block_on(sink.shutdown(Duration::from_secs(10)))
            .expect("shutdown");
    }
    group.finish();
}

criterion_group!(benches, tcp_send);
criterion_main!(benches);
