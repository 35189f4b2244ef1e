//! A minimal AMQP 0-9-1 publisher that writes its frames by hand, for
//! messages no client library would send: headers nested thousands of levels
//! deep, as a hostile publisher writes them (lapin's own encoder recurses, as
//! its parser did). It logs in with PLAIN, opens one channel in confirm mode,
//! publishes, and waits for each confirm.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

const FRAME_END: u8 = 0xCE;

/// One header value, already encoded (its type tag first).
pub(crate) struct RawValue(pub Vec<u8>);

impl RawValue {
    pub(crate) fn long_string(text: &str) -> RawValue {
        let mut out = vec![b'S'];
        out.extend_from_slice(&len32(text.len()));
        out.extend_from_slice(text.as_bytes());
        RawValue(out)
    }

    /// Arrays nested `levels` deep (the header's own value is the first),
    /// the innermost holding a `true`; written front to back, no recursion.
    pub(crate) fn nested_arrays(levels: usize) -> RawValue {
        let leaf = [b't', 1];
        let mut out = Vec::with_capacity(levels * 5 + leaf.len());
        for level in 0..levels {
            out.push(b'A');
            out.extend_from_slice(&len32(5 * (levels - 1 - level) + leaf.len()));
        }
        out.extend_from_slice(&leaf);
        RawValue(out)
    }

    /// Tables nested `levels` deep under the key `k`, the innermost holding
    /// `k: true`.
    pub(crate) fn nested_tables(levels: usize) -> RawValue {
        let leaf = [1, b'k', b't', 1];
        let mut out = Vec::with_capacity(levels * 7 + leaf.len());
        for level in 0..levels {
            if level > 0 {
                out.extend_from_slice(&[1, b'k']);
            }
            out.push(b'F');
            let inner = 7 * (levels - 1 - level) + leaf.len();
            out.extend_from_slice(&len32(inner));
        }
        out.extend_from_slice(&leaf);
        RawValue(out)
    }

    /// The most levels of `nested_*` (7 bytes a level for tables, 5 for
    /// arrays) whose header, named `name`, keeps a content-header frame with
    /// `other` bytes of further properties within `frame_max`.
    pub(crate) fn deepest_fitting(
        frame_max: usize,
        name: &str,
        other: usize,
        per_level: usize,
    ) -> usize {
        // frame header 7 + end 1, class/weight/size 12, flags 2, table
        // length 4, the name (1 + len), and the leaf (at most 4 bytes).
        let fixed = 8 + 12 + 2 + 4 + 1 + name.len() + 4 + other;
        (frame_max - fixed) / per_level
    }
}

/// A message's properties: the few a login event needs, and raw headers.
#[derive(Default)]
pub(crate) struct RawMessage {
    pub content_type: Option<String>,
    pub message_id: Option<String>,
    /// Milliseconds, as text (`"0"` expires it at once).
    pub expiration: Option<String>,
    pub headers: Vec<(String, RawValue)>,
    pub body: Vec<u8>,
}

impl RawMessage {
    /// The encoded properties (flags first), and how many bytes they take.
    fn properties(&self) -> Vec<u8> {
        let mut flags: u16 = 0;
        let mut out = Vec::new();
        // In the order of the property flags' bits, highest first.
        if let Some(content_type) = &self.content_type {
            flags |= 1 << 15;
            out.extend(short(content_type));
        }
        if !self.headers.is_empty() {
            flags |= 1 << 13;
            let mut table = Vec::new();
            for (name, value) in &self.headers {
                table.extend(short(name));
                table.extend_from_slice(&value.0);
            }
            out.extend_from_slice(&len32(table.len()));
            out.extend(table);
        }
        flags |= 1 << 12; // delivery mode
        out.push(2);
        if let Some(expiration) = &self.expiration {
            flags |= 1 << 8;
            out.extend(short(expiration));
        }
        if let Some(message_id) = &self.message_id {
            flags |= 1 << 7;
            out.extend(short(message_id));
        }
        let mut with_flags = flags.to_be_bytes().to_vec();
        with_flags.extend(out);
        with_flags
    }

    /// Bytes of its content-header frame, overhead included.
    pub(crate) fn header_frame_len(&self) -> usize {
        8 + 12 + self.properties().len()
    }
}

/// A connection with one channel in confirm mode.
pub(crate) struct RawPublisher {
    stream: TcpStream,
    published: u64,
    pub frame_max: usize,
}

impl RawPublisher {
    /// Connects as `url` (`amqp://user:password@host:port/vhost`) says.
    pub(crate) fn from_url(url: &str) -> RawPublisher {
        let url = url::Url::parse(url).expect("an AMQP URL");
        let decode = |text: &str| {
            url::form_urlencoded::parse(format!("x={text}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default()
        };
        let addr = format!(
            "{}:{}",
            url.host_str().expect("a host"),
            url.port().unwrap_or(5672)
        );
        let vhost = match url.path().trim_start_matches('/') {
            "" => "/".to_owned(),
            path => decode(path),
        };
        RawPublisher::connect(
            &addr,
            &decode(url.username()),
            &decode(url.password().unwrap_or("")),
            &vhost,
        )
    }

    /// Connects to `host:port` as `user`/`password`, to `vhost`.
    pub(crate) fn connect(addr: &str, user: &str, password: &str, vhost: &str) -> RawPublisher {
        let mut stream = TcpStream::connect(addr).expect("connect to RabbitMQ");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("read timeout");
        stream
            .write_all(b"AMQP\x00\x00\x09\x01")
            .expect("protocol header");
        let mut raw = RawPublisher {
            stream,
            published: 0,
            frame_max: 131_072,
        };
        raw.expect_method(0, 10, 10); // connection.start
        let mut start_ok = method(10, 11);
        start_ok.extend_from_slice(&len32(0)); // client properties: none
        start_ok.extend(short("PLAIN"));
        let response = format!("\0{user}\0{password}");
        start_ok.extend_from_slice(&len32(response.len()));
        start_ok.extend_from_slice(response.as_bytes());
        start_ok.extend(short("en_US"));
        raw.send(1, 0, &start_ok);
        let tune = raw.expect_method(0, 10, 30);
        let channel_max = u16::from_be_bytes([tune[0], tune[1]]);
        let frame_max = u32::from_be_bytes([tune[2], tune[3], tune[4], tune[5]]);
        raw.frame_max = frame_max as usize;
        let mut tune_ok = method(10, 31);
        tune_ok.extend_from_slice(&channel_max.to_be_bytes());
        tune_ok.extend_from_slice(&frame_max.to_be_bytes());
        tune_ok.extend_from_slice(&0u16.to_be_bytes()); // no heartbeats
        raw.send(1, 0, &tune_ok);
        let mut open = method(10, 40);
        open.extend(short(vhost));
        open.extend(short(""));
        open.push(0);
        raw.send(1, 0, &open);
        raw.expect_method(0, 10, 41);
        let mut channel_open = method(20, 10);
        channel_open.extend(short(""));
        raw.send(1, 1, &channel_open);
        raw.expect_method(1, 20, 11);
        let mut select = method(85, 10);
        select.push(0);
        raw.send(1, 1, &select);
        raw.expect_method(1, 85, 11);
        raw
    }

    /// Publishes `message` to `exchange` with `routing_key` and waits for
    /// RabbitMQ's confirm. Panics if RabbitMQ nacks it or closes the channel.
    pub(crate) fn publish(&mut self, exchange: &str, routing_key: &str, message: &RawMessage) {
        let mut publish = method(60, 40);
        publish.extend_from_slice(&0u16.to_be_bytes());
        publish.extend(short(exchange));
        publish.extend(short(routing_key));
        publish.push(0);
        self.send(1, 1, &publish);
        let mut header = Vec::new();
        header.extend_from_slice(&60u16.to_be_bytes());
        header.extend_from_slice(&0u16.to_be_bytes());
        header.extend_from_slice(&(message.body.len() as u64).to_be_bytes());
        header.extend(message.properties());
        assert!(
            header.len() + 8 <= self.frame_max,
            "the header frame ({} bytes) must fit frame_max ({})",
            header.len() + 8,
            self.frame_max
        );
        self.send(2, 1, &header);
        for chunk in message.body.chunks(self.frame_max - 8) {
            self.send(3, 1, chunk);
        }
        self.published += 1;
        // basic.ack (60, 80) for this delivery tag.
        loop {
            let (kind, channel, payload) = self.read_frame();
            if kind == 8 {
                continue; // heartbeat
            }
            let ids = (
                u16::from_be_bytes([payload[0], payload[1]]),
                u16::from_be_bytes([payload[2], payload[3]]),
            );
            match ids {
                (60, 80) => return,
                (60, 120) => panic!("RabbitMQ nacked the raw publish"),
                (20, 40) | (10, 50) => panic!(
                    "RabbitMQ closed the channel {channel}: {}",
                    String::from_utf8_lossy(&payload[6..])
                ),
                _ => {}
            }
        }
    }

    fn send(&mut self, kind: u8, channel: u16, payload: &[u8]) {
        let mut frame = Vec::with_capacity(payload.len() + 8);
        frame.push(kind);
        frame.extend_from_slice(&channel.to_be_bytes());
        frame.extend_from_slice(&len32(payload.len()));
        frame.extend_from_slice(payload);
        frame.push(FRAME_END);
        self.stream.write_all(&frame).expect("write a frame");
    }

    fn read_frame(&mut self) -> (u8, u16, Vec<u8>) {
        let mut head = [0u8; 7];
        self.stream
            .read_exact(&mut head)
            .expect("read a frame header");
        let size = u32::from_be_bytes([head[3], head[4], head[5], head[6]]) as usize;
        let mut payload = vec![0u8; size + 1];
        self.stream.read_exact(&mut payload).expect("read a frame");
        assert_eq!(payload.pop(), Some(FRAME_END), "frame end");
        (head[0], u16::from_be_bytes([head[1], head[2]]), payload)
    }

    /// Reads frames until the method `class.method` arrives on `channel`;
    /// returns its arguments.
    fn expect_method(&mut self, channel: u16, class: u16, id: u16) -> Vec<u8> {
        loop {
            let (kind, on, payload) = self.read_frame();
            if kind != 1 || on != channel {
                continue;
            }
            let got = (
                u16::from_be_bytes([payload[0], payload[1]]),
                u16::from_be_bytes([payload[2], payload[3]]),
            );
            if got == (class, id) {
                return payload[4..].to_vec();
            }
            assert!(
                got != (10, 50) && got != (20, 40),
                "RabbitMQ closed the connection or channel: {}",
                String::from_utf8_lossy(&payload[6..])
            );
        }
    }
}

impl Drop for RawPublisher {
    fn drop(&mut self) {
        let mut close = method(10, 50);
        close.extend_from_slice(&200u16.to_be_bytes());
        close.extend(short("bye"));
        close.extend_from_slice(&[0, 0, 0, 0]);
        let mut frame = vec![1, 0, 0];
        frame.extend_from_slice(&len32(close.len()));
        frame.extend(close);
        frame.push(FRAME_END);
        let _ = self.stream.write_all(&frame);
    }
}

fn method(class: u16, id: u16) -> Vec<u8> {
    let mut out = class.to_be_bytes().to_vec();
    out.extend_from_slice(&id.to_be_bytes());
    out
}

fn short(text: &str) -> Vec<u8> {
    let mut out = vec![u8::try_from(text.len()).expect("a short string")];
    out.extend_from_slice(text.as_bytes());
    out
}

fn len32(n: usize) -> [u8; 4] {
    u32::try_from(n).expect("fits 32 bits").to_be_bytes()
}
