//! One connection of the fault server: the SMTP dialogue, with the faults
//! of [`Behaviour`] applied where their [`Step`] comes.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use super::{Action, Behaviour, Command, Received, State, Step, lock};

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// What a fault left us to do.
enum Flow {
    /// No fault: reply normally.
    Normal,
    /// A reply was sent instead; go on as if the command was accepted or not.
    Replied { accepted: bool },
    /// The connection is over.
    End,
}

/// Whether to go on reading commands.
type Continue = bool;

struct Session<'a> {
    state: &'a State,
    behaviour: &'a Behaviour,
    index: usize,
    io: BufReader<Box<dyn Io>>,
    tls: bool,
    user: Option<String>,
    mail_from: Option<String>,
    rcpt_to: Vec<String>,
    /// The recipient being given at RCPT, for faults aimed at it.
    rcpt_now: Option<String>,
    /// The last reply written in full.
    last_sent: String,
    /// An [`Action::EarlyAccept`] fired in this transaction.
    early: bool,
}

/// Serves one connection, start to end.
pub(super) async fn serve(tcp: TcpStream, index: usize, state: &State) {
    let mut session = Session {
        state,
        behaviour: &state.behaviour,
        index,
        io: BufReader::new(Box::new(tcp)),
        tls: false,
        user: None,
        mail_from: None,
        rcpt_to: Vec::new(),
        rcpt_now: None,
        last_sent: String::new(),
        early: false,
    };
    if session.behaviour.implicit_tls && !session.upgrade().await {
        return;
    }
    let greeted = match session.fault(Step::Greeting).await {
        Flow::End => false,
        Flow::Replied { .. } => true,
        Flow::Normal => session.send(&session.behaviour.greeting.clone()).await,
    };
    if !greeted {
        return;
    }
    while let Some(line) = session.line().await {
        let text = String::from_utf8_lossy(&line)
            .trim_end_matches(['\r', '\n'])
            .to_owned();
        lock(&state.record).commands.push(Command {
            connection: index,
            tls: session.tls,
            line: text.clone(),
        });
        if !session.command(&text).await {
            return;
        }
    }
}

impl Session<'_> {
    async fn command(&mut self, text: &str) -> Continue {
        let (verb, arg) = text.split_once(' ').unwrap_or((text, ""));
        match verb.to_ascii_uppercase().as_str() {
            "EHLO" | "HELO" => self.ehlo().await,
            "STARTTLS" => self.starttls().await,
            "AUTH" => self.auth(arg).await,
            "MAIL" => self.mail(arg).await,
            "RCPT" => self.rcpt(arg).await,
            "DATA" => self.data().await,
            "RSET" => self.rset().await,
            "NOOP" => self.send("250 2.0.0 ok").await,
            "QUIT" => {
                self.send("221 2.0.0 bye").await;
                false
            }
            _ => self.send("500 5.5.2 command not recognised").await,
        }
    }

    /// Runs the fault for `step`, if any; `normal` is the usual reply.
    /// Returns whether the command was accepted, or `None` to hang up.
    async fn reply(&mut self, step: Step, normal: &str) -> Option<bool> {
        match self.fault(step).await {
            Flow::End => None,
            Flow::Replied { accepted } => Some(accepted),
            Flow::Normal => self
                .send(normal)
                .await
                .then_some(normal.starts_with(['2', '3'])),
        }
    }

    async fn ehlo(&mut self) -> Continue {
        let mut keywords = self.behaviour.extensions.clone();
        if self.behaviour.tls.is_some() && !self.tls {
            keywords.push("STARTTLS".into());
        }
        if self.behaviour.credentials.is_some() {
            keywords.push(format!("AUTH {}", self.behaviour.auth_mechanisms));
        }
        let mut reply = String::from("250");
        reply.push(if keywords.is_empty() { ' ' } else { '-' });
        reply.push_str("fault.test greets you");
        for (i, keyword) in keywords.iter().enumerate() {
            let separator = if i + 1 == keywords.len() { ' ' } else { '-' };
            reply.push_str(&format!("\r\n250{separator}{keyword}"));
        }
        self.reply(Step::Ehlo, &reply).await.is_some()
    }

    async fn starttls(&mut self) -> Continue {
        match self
            .reply(Step::StartTls, "220 2.0.0 ready to start TLS")
            .await
        {
            None => false,
            Some(false) => true,
            // STARTTLS advertised by hand, without a TLS configuration:
            // answer in plaintext where the handshake should be.
            Some(true) if self.behaviour.tls.is_none() => {
                self.send("this is not TLS").await;
                false
            }
            Some(true) => {
                // RFC 3207: the session starts over.
                self.user = None;
                self.mail_from = None;
                self.rcpt_to.clear();
                self.upgrade().await
            }
        }
    }

    async fn auth(&mut self, arg: &str) -> Continue {
        let user = self.authenticate(arg).await;
        let normal = if user.is_some() {
            "235 2.7.0 authenticated"
        } else {
            "535 5.7.8 authentication credentials invalid"
        };
        match self.reply(Step::Auth, normal).await {
            None => false,
            Some(accepted) => {
                if accepted {
                    self.user = user;
                }
                true
            }
        }
    }

    async fn mail(&mut self, arg: &str) -> Continue {
        match self.reply(Step::Mail, "250 2.1.0 sender ok").await {
            None => false,
            Some(accepted) => {
                if accepted {
                    self.mail_from = address(arg);
                    self.rcpt_to.clear();
                }
                true
            }
        }
    }

    async fn rcpt(&mut self, arg: &str) -> Continue {
        let to = address(arg);
        let step = match &to {
            Some(to)
                if self
                    .behaviour
                    .faults
                    .iter()
                    .any(|f| f.step == Step::RcptTo(to.clone())) =>
            {
                Step::RcptTo(to.clone())
            }
            _ => Step::Rcpt,
        };
        let full = self
            .behaviour
            .max_recipients
            .is_some_and(|max| self.rcpt_to.len() >= max);
        let from = self.mail_from.clone().unwrap_or_default();
        let normal = match &to {
            _ if full => "452 4.5.3 too many recipients",
            Some(to) if self.state.greylists(&from, to) => "450 4.7.1 greylisted, try again later",
            _ => "250 2.1.5 recipient ok",
        };
        self.rcpt_now.clone_from(&to);
        let replied = self.reply(step, normal).await;
        self.rcpt_now = None;
        match replied {
            None => false,
            Some(accepted) => {
                if accepted && let Some(to) = to {
                    self.rcpt_to.push(to);
                }
                true
            }
        }
    }

    async fn rset(&mut self) -> Continue {
        self.mail_from = None;
        self.rcpt_to.clear();
        self.reply(Step::Rset, "250 2.0.0 reset").await.is_some()
    }

    async fn data(&mut self) -> Continue {
        let normal = if self.mail_from.is_none() || self.rcpt_to.is_empty() {
            "503 5.5.1 no valid recipients"
        } else {
            "354 end data with <CR><LF>.<CR><LF>"
        };
        match self.reply(Step::Data, normal).await {
            None => return false,
            Some(false) => return true,
            Some(true) => {}
        }
        let Some(data) = self.read_data().await else {
            return false;
        };
        let number = {
            let mut record = lock(&self.state.record);
            record.received.push(Received {
                connection: self.index,
                mail_from: self.mail_from.clone().unwrap_or_default(),
                rcpt_to: self.rcpt_to.clone(),
                data,
                tls: self.tls,
                user: self.user.clone(),
                reply: String::new(),
            });
            record.received.len() - 1
        };
        let normal = if std::mem::take(&mut self.early) {
            "554 5.6.0 refused: the early 250 was not an acceptance".to_owned()
        } else {
            format!("250 2.0.0 queued as {number}")
        };
        // The recipients stay in play for faults aimed at them.
        self.last_sent.clear();
        let replied = self.reply(Step::DataEnd, &normal).await;
        if !self.last_sent.is_empty() {
            lock(&self.state.record).received[number].reply = std::mem::take(&mut self.last_sent);
        }
        self.mail_from = None;
        self.rcpt_to.clear();
        replied.is_some()
    }

    /// Applies the fault for `step`, if any.
    async fn fault(&mut self, step: Step) -> Flow {
        let mut recipients: Vec<&str> = self.rcpt_to.iter().map(String::as_str).collect();
        recipients.extend(self.rcpt_now.as_deref());
        let fault = self.state.fault(&step, self.index, &recipients);
        match fault {
            None => Flow::Normal,
            Some(Action::Reply(text)) => {
                if !self.send(&text).await {
                    return Flow::End;
                }
                Flow::Replied {
                    accepted: text.starts_with(['2', '3']),
                }
            }
            Some(Action::ReplyAndClose(text)) => {
                self.send(&text).await;
                Flow::End
            }
            Some(Action::Drop) => Flow::End,
            Some(Action::Stall) => std::future::pending().await,
            Some(Action::Delay(pause)) => {
                tokio::time::sleep(pause).await;
                Flow::Normal
            }
            Some(Action::Trickle { text, every }) => {
                if !self.trickle(&text, every).await {
                    return Flow::End;
                }
                Flow::Replied {
                    accepted: text.starts_with(['2', '3']),
                }
            }
            Some(Action::Hang) => {
                while self.line().await.is_some() {}
                Flow::End
            }
            Some(Action::EarlyAccept) => {
                if !self.send("354 go ahead\r\n250 2.0.0 accepted early").await {
                    return Flow::End;
                }
                self.early = true;
                Flow::Replied { accepted: true }
            }
            Some(Action::ReplyThenGarbage(text)) => {
                if self.send(&text).await {
                    let stream = self.io.get_mut();
                    let garbage = b"\x15\x03\x01\x00\x02\x02\x50 this is neither SMTP nor TLS\r\n";
                    stream.write_all(garbage).await.ok();
                    stream.flush().await.ok();
                }
                Flow::End
            }
        }
    }

    /// Sends `text` and CRLF; false if the connection is gone.
    async fn send(&mut self, text: &str) -> bool {
        let bytes = format!("{text}\r\n");
        let stream = self.io.get_mut();
        let sent = stream.write_all(bytes.as_bytes()).await.is_ok() && stream.flush().await.is_ok();
        if sent {
            text.clone_into(&mut self.last_sent);
        }
        sent
    }

    /// Sends `text` and CRLF a byte at a time, `every` before each byte;
    /// false if the connection is gone.
    async fn trickle(&mut self, text: &str, every: Duration) -> bool {
        let bytes = format!("{text}\r\n");
        let stream = self.io.get_mut();
        for byte in bytes.as_bytes() {
            tokio::time::sleep(every).await;
            if stream.write_all(&[*byte]).await.is_err() || stream.flush().await.is_err() {
                return false;
            }
        }
        text.clone_into(&mut self.last_sent);
        true
    }

    /// The next line with its line ending; `None` at the end.
    async fn line(&mut self) -> Option<Vec<u8>> {
        let mut line = Vec::new();
        match self.io.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(line),
        }
    }

    /// Replaces the stream with its TLS version; false if that failed.
    async fn upgrade(&mut self) -> bool {
        let Some(config) = &self.behaviour.tls else {
            return false;
        };
        // A throwaway stream stands in while the real one is upgraded.
        let placeholder: Box<dyn Io> = Box::new(tokio::io::duplex(1).0);
        let plain = std::mem::replace(&mut self.io, BufReader::new(placeholder));
        // Bytes buffered in plaintext are dropped, as a careful server must.
        match TlsAcceptor::from(Arc::clone(config))
            .accept(plain.into_inner())
            .await
        {
            Ok(tls) => {
                self.io = BufReader::new(Box::new(tls));
                self.tls = true;
                true
            }
            Err(_) => false,
        }
    }

    /// Runs the AUTH exchange up to (not including) the final reply; returns
    /// the user name when the credentials are right.
    async fn authenticate(&mut self, arg: &str) -> Option<String> {
        let (mechanism, initial) = arg.split_once(' ').unwrap_or((arg, ""));
        let (username, password) = match mechanism.to_ascii_uppercase().as_str() {
            "PLAIN" => {
                let token = if initial.is_empty() {
                    self.send("334 ").await;
                    String::from_utf8_lossy(&self.line().await?).into_owned()
                } else {
                    initial.to_owned()
                };
                let decoded = decode(&token)?;
                let mut parts = decoded.split('\0').skip(1);
                (parts.next()?.to_owned(), parts.next()?.to_owned())
            }
            "LOGIN" => {
                self.send("334 VXNlcm5hbWU6").await;
                let username = decode(&String::from_utf8_lossy(&self.line().await?))?;
                self.send("334 UGFzc3dvcmQ6").await;
                let password = decode(&String::from_utf8_lossy(&self.line().await?))?;
                (username, password)
            }
            _ => return None,
        };
        let (expected_user, expected_password) = self.behaviour.credentials.as_ref()?;
        (&username == expected_user && &password == expected_password).then_some(username)
    }

    /// Reads the message up to the final `.` line, undoing dot-stuffing.
    async fn read_data(&mut self) -> Option<Vec<u8>> {
        let mut data = Vec::new();
        loop {
            let line = self.line().await?;
            if line == b".\r\n" {
                return Some(data);
            }
            data.extend_from_slice(line.strip_prefix(b".").unwrap_or(&line));
        }
    }
}

fn decode(base64: &str) -> Option<String> {
    let bytes = BASE64.decode(base64.trim()).ok()?;
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

/// The address inside `FROM:<...>` / `TO:<...>`.
fn address(arg: &str) -> Option<String> {
    let start = arg.find('<')? + 1;
    let end = start + arg[start..].find('>')?;
    Some(arg[start..end].to_owned())
}
