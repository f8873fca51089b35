//! A Modbus TCP simulator: one device with all four tables, served with tokio-modbus over a real
//! socket, so the Modbus driver is always exercised end to end. It records every write (and can
//! log them as JSON lines) so tests can count writes per register, and can mirror a holding
//! register into an input register with a first-order lag, like a process value following its
//! setpoint.

use std::{
    collections::HashMap,
    io::Write,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{net::TcpListener, task::JoinHandle};
use tokio_modbus::{
    ExceptionCode, Request, Response,
    server::tcp::{Server, accept_tcp_connection},
};

/// One recorded write.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct WriteRecord {
    pub at_unix_micros: i64,
    pub table: &'static str,
    pub address: u16,
    pub values: Vec<u16>,
}

/// The device's memory.
#[derive(Debug, Default)]
pub struct Registers {
    pub coils: HashMap<u16, bool>,
    pub discrete: HashMap<u16, bool>,
    pub input: HashMap<u16, u16>,
    pub holding: HashMap<u16, u16>,
    pub writes: Vec<WriteRecord>,
    /// How long each request takes to answer, like a slow PLC on a busy bus.
    pub response_delay: Duration,
}

/// Shared state of a simulated device.
#[derive(Debug, Clone, Default)]
pub struct Device {
    pub regs: Arc<Mutex<Registers>>,
    log: Option<Arc<Mutex<std::fs::File>>>,
}

impl Device {
    pub fn with_log(path: PathBuf) -> std::io::Result<Self> {
        let f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Self { regs: Arc::default(), log: Some(Arc::new(Mutex::new(f))) })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registers> {
        self.regs.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes recorded so far, optionally only to one table/address.
    pub fn writes_to(&self, table: &str, address: u16) -> usize {
        self.lock().writes.iter().filter(|w| w.table == table && w.address == address).count()
    }

    fn record(&self, regs: &mut Registers, table: &'static str, address: u16, values: Vec<u16>) {
        let rec = WriteRecord { at_unix_micros: shopfloor_wire::time::now_micros(), table, address, values };
        if let Some(log) = &self.log
            && let Ok(line) = serde_json::to_string(&rec)
        {
            let mut f = log.lock().unwrap_or_else(|p| p.into_inner());
            let _ = writeln!(f, "{line}");
            let _ = f.sync_data();
        }
        regs.writes.push(rec);
    }

    fn handle(&self, req: Request<'static>) -> Result<Response, ExceptionCode> {
        let mut regs = self.lock();
        let range = |a: u16, n: u16| -> Result<std::ops::Range<u16>, ExceptionCode> {
            a.checked_add(n).map(|end| a..end).ok_or(ExceptionCode::IllegalDataAddress)
        };
        Ok(match req {
            Request::ReadCoils(a, n) => {
                Response::ReadCoils(range(a, n)?.map(|i| *regs.coils.get(&i).unwrap_or(&false)).collect())
            }
            Request::ReadDiscreteInputs(a, n) => {
                Response::ReadDiscreteInputs(range(a, n)?.map(|i| *regs.discrete.get(&i).unwrap_or(&false)).collect())
            }
            Request::ReadInputRegisters(a, n) => {
                Response::ReadInputRegisters(range(a, n)?.map(|i| *regs.input.get(&i).unwrap_or(&0)).collect())
            }
            Request::ReadHoldingRegisters(a, n) => {
                Response::ReadHoldingRegisters(range(a, n)?.map(|i| *regs.holding.get(&i).unwrap_or(&0)).collect())
            }
            Request::WriteSingleCoil(a, v) => {
                regs.coils.insert(a, v);
                self.record(&mut regs, "coil", a, vec![u16::from(v)]);
                Response::WriteSingleCoil(a, v)
            }
            Request::WriteMultipleCoils(a, vs) => {
                for (i, v) in vs.iter().enumerate() {
                    regs.coils.insert(a.wrapping_add(i as u16), *v);
                }
                self.record(&mut regs, "coil", a, vs.iter().map(|v| u16::from(*v)).collect());
                Response::WriteMultipleCoils(a, vs.len() as u16)
            }
            Request::WriteSingleRegister(a, v) => {
                regs.holding.insert(a, v);
                self.record(&mut regs, "holding", a, vec![v]);
                Response::WriteSingleRegister(a, v)
            }
            Request::WriteMultipleRegisters(a, vs) => {
                for (i, v) in vs.iter().enumerate() {
                    regs.holding.insert(a.wrapping_add(i as u16), *v);
                }
                self.record(&mut regs, "holding", a, vs.to_vec());
                Response::WriteMultipleRegisters(a, vs.len() as u16)
            }
            _ => return Err(ExceptionCode::IllegalFunction),
        })
    }
}

struct Service(Device);

impl tokio_modbus::server::Service for Service {
    type Request = Request<'static>;
    type Response = Response;
    type Exception = ExceptionCode;
    type Future = std::pin::Pin<Box<dyn Future<Output = Result<Response, ExceptionCode>> + Send>>;

    fn call(&self, req: Self::Request) -> Self::Future {
        let device = self.0.clone();
        Box::pin(async move {
            let delay = device.lock().response_delay;
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            device.handle(req)
        })
    }
}

/// A holding register copied into an input register, approaching it by `factor` per tick.
#[derive(Clone, Copy, Debug)]
pub struct Mirror {
    pub holding: u16,
    pub input: u16,
    /// Words per value (2 for 32-bit layouts: mirrored as-is, no lag).
    pub width: u16,
    pub factor: f64,
}

/// A running simulator; stops when dropped.
#[derive(Debug)]
pub struct Simulator {
    pub addr: SocketAddr,
    pub device: Device,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Simulator {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl Simulator {
    pub async fn start(addr: SocketAddr, device: Device, mirrors: Vec<Mirror>) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let server = Server::new(listener);
        let d = device.clone();
        let serve = tokio::spawn(async move {
            let new_service = move |_| Ok(Some(Service(d.clone())));
            let on_connected = |stream, socket_addr| {
                let r = accept_tcp_connection(stream, socket_addr, &new_service);
                async move { r }
            };
            if let Err(e) = server.serve(&on_connected, |e| tracing::debug!("modbus client: {e}")).await {
                tracing::error!("modbus simulator stopped: {e}");
            }
        });
        let mut tasks = vec![serve];
        if !mirrors.is_empty() {
            let d = device.clone();
            tasks.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(100));
                loop {
                    tick.tick().await;
                    let mut regs = d.lock();
                    for m in &mirrors {
                        if m.width == 1 {
                            let target = f64::from(*regs.holding.get(&m.holding).unwrap_or(&0));
                            let current = f64::from(*regs.input.get(&m.input).unwrap_or(&0));
                            let next = current + (target - current) * m.factor;
                            let next = if (target - next).abs() < 1.0 { target } else { next };
                            regs.input.insert(m.input, next.round() as u16);
                        } else {
                            for k in 0..m.width {
                                let w = *regs.holding.get(&(m.holding + k)).unwrap_or(&0);
                                regs.input.insert(m.input + k, w);
                            }
                        }
                    }
                }
            }));
        }
        Ok(Self { addr, device, tasks })
    }
}
