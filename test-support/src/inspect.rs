//! Reaching the server: its address, clients and connections, and the counters tests and
//! benchmarks read (`INFO commandstats`, `INFO stats`).

use std::path::Path;
use std::time::Duration;

use redis::IntoConnectionInfo;

use crate::server::{Listen, RedisServer};
use crate::{Error, tls};

impl RedisServer {
    /// The server's URL (`redis://127.0.0.1:PORT`, `redis+unix:///…/redis.sock` or
    /// `rediss://127.0.0.1:PORT`).
    pub fn url(&self) -> String {
        match &self.listen {
            Listen::Tcp(port) => format!("redis://127.0.0.1:{port}"),
            Listen::Unix(path) => format!("redis+unix://{}", path.display()),
            Listen::Tls(port) => format!("rediss://127.0.0.1:{port}"),
        }
    }

    /// The TCP port.
    ///
    /// # Panics
    ///
    /// For a unix-socket server.
    pub fn port(&self) -> u16 {
        match &self.listen {
            Listen::Tcp(port) | Listen::Tls(port) => *port,
            Listen::Unix(_) => panic!("a unix-socket server has no port"),
        }
    }

    /// The unix socket path, if that is how it listens.
    pub fn socket(&self) -> Option<&Path> {
        match &self.listen {
            Listen::Unix(path) => Some(path),
            Listen::Tcp(_) | Listen::Tls(_) => None,
        }
    }

    /// The PEM of the CA that signed a TLS server's certificate.
    ///
    /// # Panics
    ///
    /// For a server without TLS.
    pub fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(tls::ca_path(self.dir())).expect("a TLS server's CA")
    }

    /// A client for this server (trusting a TLS server's CA). Its connections skip
    /// `CLIENT SETINFO`, so inspecting the server adds no command but the one asked.
    ///
    /// # Panics
    ///
    /// When the URL is not understood (a bug of this crate).
    pub fn client(&self) -> redis::Client {
        let info = self.url().into_connection_info().expect("a valid URL");
        let settings = info.redis_settings().clone().set_skip_set_lib_name();
        let info = info.set_redis_settings(settings);
        match &self.listen {
            Listen::Tls(_) => {
                tls::install_crypto_provider();
                redis::Client::build_with_tls(
                    info,
                    redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(self.ca_pem()),
                    },
                )
                .expect("TLS client")
            }
            _ => redis::Client::open(info).expect("client"),
        }
    }

    /// Whether the server answers `PING` within 200 ms.
    pub(crate) fn ping(&self) -> bool {
        let client = self.client();
        let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_millis(200)) else {
            return false;
        };
        redis::cmd("PING").query::<String>(&mut conn).is_ok()
    }

    /// A plain synchronous connection, for setting up and inspecting state in tests.
    ///
    /// # Panics
    ///
    /// When the server does not accept it within 5 s.
    pub fn conn(&self) -> redis::Connection {
        self.client()
            .get_connection_with_timeout(Duration::from_secs(5))
            .expect("connect to the test redis-server")
    }

    /// Runs one command on a fresh connection (connect, read and write time out after 5 s).
    pub(crate) fn query_raw<T: redis::FromRedisValue>(
        &self,
        args: &[&str],
    ) -> redis::RedisResult<T> {
        let timeout = Some(Duration::from_secs(5));
        let mut conn = self
            .client()
            .get_connection_with_timeout(Duration::from_secs(5))?;
        conn.set_read_timeout(timeout)?;
        conn.set_write_timeout(timeout)?;
        let (name, rest) = args.split_first().unwrap_or((&"PING", &[]));
        redis::cmd(name).arg(rest).query(&mut conn)
    }

    /// Runs one command on a fresh connection, e.g. `query::<u64>(&["DBSIZE"])`.
    ///
    /// # Errors
    ///
    /// When the server cannot be reached, refuses the command, or the reply is not a `T`.
    pub fn query<T: redis::FromRedisValue>(&self, args: &[&str]) -> Result<T, Error> {
        self.query_raw(args)
            .map_err(|e| Error::Server(format!("{args:?} failed: {e}")))
    }

    /// Runs one command on a fresh connection, for tests.
    ///
    /// # Panics
    ///
    /// When [`RedisServer::query`] fails.
    pub fn cmd<T: redis::FromRedisValue>(&self, args: &[&str]) -> T {
        self.query(args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The calls of each command so far (`INFO commandstats`: `cmdstat_get:calls=12,...`),
    /// e.g. `("get", 12)`, `("config|set", 2)`.
    ///
    /// # Errors
    ///
    /// See [`RedisServer::query`].
    pub fn command_stats(&self) -> Result<Vec<(String, u64)>, Error> {
        let info: String = self.query(&["INFO", "commandstats"])?;
        Ok(parse_commandstats(&info))
    }

    /// How many times `command` (lowercase, e.g. `"get"`) ran, from `INFO commandstats`.
    ///
    /// # Panics
    ///
    /// When [`RedisServer::command_stats`] fails.
    pub fn command_calls(&self, command: &str) -> u64 {
        self.command_stats()
            .unwrap_or_else(|e| panic!("{e}"))
            .into_iter()
            .find_map(|(name, calls)| (name == command).then_some(calls))
            .unwrap_or(0)
    }

    /// Total commands processed by the server (every command, `INFO` included).
    ///
    /// # Panics
    ///
    /// When `INFO stats` fails.
    pub fn total_commands(&self) -> u64 {
        let info: String = self.cmd(&["INFO", "stats"]);
        info.lines()
            .find_map(|line| line.strip_prefix("total_commands_processed:"))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    }
}

/// The calls of each command in an `INFO commandstats` reply.
fn parse_commandstats(info: &str) -> Vec<(String, u64)> {
    info.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("cmdstat_")?;
            let (name, stats) = rest.split_once(':')?;
            let calls = stats
                .split(',')
                .find_map(|kv| kv.strip_prefix("calls="))?
                .parse()
                .ok()?;
            Some((name.to_owned(), calls))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commandstats_are_parsed() {
        let info = "# Commandstats\r\ncmdstat_get:calls=12,usec=30,usec_per_call=2.5\r\n\
                    cmdstat_info:calls=1,usec=10\r\ncmdstat_config|set:calls=2,usec=1\r\n";
        assert_eq!(
            parse_commandstats(info),
            vec![
                ("get".to_owned(), 12),
                ("info".to_owned(), 1),
                ("config|set".to_owned(), 2)
            ]
        );
    }
}
