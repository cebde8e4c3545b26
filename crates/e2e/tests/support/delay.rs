//! A TCP proxy that delays every request chunk on its way to the server: a
//! slow network (or a slow memcached) for one client only.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

/// A running proxy; stops (with every connection through it) on drop.
pub struct DelayProxy {
    addr: String,
    task: JoinHandle<()>,
}

impl DelayProxy {
    /// Listens on a free local port and forwards to `upstream`, holding
    /// each chunk the client sends for `delay` first.
    pub async fn start(upstream: &str, delay: Duration) -> DelayProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let upstream = upstream.to_owned();
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let upstream = upstream.clone();
                connections.spawn(async move {
                    if let Ok(server) = TcpStream::connect(&upstream).await {
                        relay(client, server, delay).await;
                    }
                });
            }
        });
        DelayProxy { addr, task }
    }

    /// `host:port` to connect to instead of the upstream.
    pub fn addr(&self) -> &str {
        &self.addr
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(client: TcpStream, server: TcpStream, delay: Duration) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let requests = async {
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let n = match client_read.read(&mut buffer).await {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            tokio::time::sleep(delay).await;
            if server_write.write_all(&buffer[..n]).await.is_err() {
                break;
            }
        }
    };
    let replies = tokio::io::copy(&mut server_read, &mut client_write);
    tokio::select! {
        () = requests => {}
        _ = replies => {}
    }
}
