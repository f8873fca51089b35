//! Modbus TCP on tokio-modbus: coils, discrete inputs, input and holding registers; scale and
//! offset; 16- and 32-bit integers and f32 over two registers (high word first); a timeout per
//! request; reconnection after a broken socket. When the equipment's slice is steered, its
//! connection carries the slice's fwmark and DSCP code point.

use std::{net::SocketAddr, time::Duration};

use futures::future::BoxFuture;
use shopfloor_wire::proto::{ModbusMapping, ModbusTable, ModbusTcp, PropertyConfig, RegisterType, Value, ValueType};
use tokio::sync::Mutex;
use tokio_modbus::{
    client::{Context, Reader, Writer},
    prelude::SlaveContext,
};

use super::{Driver, DriverError};
use shopfloor_wire::value;

use crate::slices::Marking;

pub struct ModbusDriver {
    target: String,
    unit: u8,
    timeout: Duration,
    marking: Option<Marking>,
    // One request at a time per device: Modbus TCP devices often serve a single transaction.
    ctx: Mutex<Option<Context>>,
}

impl std::fmt::Debug for ModbusDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModbusDriver")
            .field("target", &self.target)
            .field("unit", &self.unit)
            .field("marking", &self.marking)
            .finish_non_exhaustive()
    }
}

/// Registers a value occupies.
pub fn width(rt: RegisterType) -> u16 {
    match rt {
        RegisterType::U16 | RegisterType::I16 => 1,
        RegisterType::U32 | RegisterType::I32 | RegisterType::F32 => 2,
    }
}

/// Engineering value → registers.
pub fn encode(m: &ModbusMapping, ty: ValueType, v: &Value) -> Result<Vec<u16>, DriverError> {
    let x = value::as_register_number(v).ok_or_else(|| DriverError::Value("no value".into()))?;
    let scale = if m.scale == 0.0 { 1.0 } else { m.scale };
    let raw = (x - m.offset) / scale;
    let rt = m.register_type();
    let out_of_range =
        || DriverError::Value(format!("{x} does not fit a {rt:?} register at scale {scale} offset {}", m.offset));
    let int = |lo: f64, hi: f64| {
        let r = raw.round();
        if r < lo || r > hi || !r.is_finite() { Err(out_of_range()) } else { Ok(r as i64) }
    };
    let _ = ty;
    Ok(match rt {
        RegisterType::U16 => vec![int(0.0, 65535.0)? as u16],
        RegisterType::I16 => vec![int(-32768.0, 32767.0)? as i16 as u16],
        RegisterType::U32 => {
            let n = int(0.0, 4_294_967_295.0)? as u32;
            vec![(n >> 16) as u16, n as u16]
        }
        RegisterType::I32 => {
            let n = int(-2_147_483_648.0, 2_147_483_647.0)? as i32 as u32;
            vec![(n >> 16) as u16, n as u16]
        }
        RegisterType::F32 => {
            let bits = (raw as f32).to_bits();
            vec![(bits >> 16) as u16, bits as u16]
        }
    })
}

/// Registers → engineering value of the property's type.
pub fn decode(m: &ModbusMapping, ty: ValueType, regs: &[u16]) -> Result<Value, DriverError> {
    let word = |i: usize| regs.get(i).copied().ok_or_else(|| DriverError::Value("short read".into()));
    let raw: f64 = match m.register_type() {
        RegisterType::U16 => f64::from(word(0)?),
        RegisterType::I16 => f64::from(word(0)? as i16),
        RegisterType::U32 => f64::from((u32::from(word(0)?) << 16) | u32::from(word(1)?)),
        RegisterType::I32 => f64::from(((u32::from(word(0)?) << 16) | u32::from(word(1)?)) as i32),
        RegisterType::F32 => f64::from(f32::from_bits((u32::from(word(0)?) << 16) | u32::from(word(1)?))),
    };
    let scale = if m.scale == 0.0 { 1.0 } else { m.scale };
    let x = raw * scale + m.offset;
    Ok(match ty {
        ValueType::Int => value::int_value(x.round() as i64),
        ValueType::Bool => value::bool_value(x != 0.0),
        _ => value::float_value(x),
    })
}

impl ModbusDriver {
    pub fn new(cfg: &ModbusTcp) -> Self {
        Self {
            target: format!("{}:{}", cfg.host, cfg.port),
            unit: u8::try_from(cfg.unit_id).unwrap_or(1),
            timeout: Duration::from_millis(cfg.timeout_ms.max(10)),
            marking: None,
            ctx: Mutex::new(None),
        }
    }

    /// Marks the connection for a steered slice.
    #[must_use]
    pub fn with_marking(mut self, marking: Option<Marking>) -> Self {
        self.marking = marking;
        self
    }

    async fn connect(&self) -> Result<Context, DriverError> {
        let addr: SocketAddr = tokio::net::lookup_host(&self.target)
            .await
            .ok()
            .and_then(|mut a| a.next())
            .ok_or_else(|| DriverError::Unreachable(format!("{} (cannot resolve)", self.target)))?;
        let stream = tokio::time::timeout(self.timeout, dial(addr, self.marking))
            .await
            .map_err(|_| DriverError::Timeout(self.timeout))?
            .map_err(|e| DriverError::Unreachable(format!("{}: {e}", self.target)))?;
        let _ = stream.set_nodelay(true);
        Ok(tokio_modbus::client::tcp::attach_slave(stream, self.unit.into()))
    }
}

/// Connects to `addr`, with the slice's fwmark and DSCP set before the SYN so every packet of
/// the connection is routed and marked as the slice.
async fn dial(addr: SocketAddr, marking: Option<Marking>) -> std::io::Result<tokio::net::TcpStream> {
    let Some(m) = marking else { return tokio::net::TcpStream::connect(addr).await };
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    #[cfg(target_os = "linux")]
    socket.set_mark(m.fwmark)?;
    if let Some(dscp) = m.dscp {
        let tos = u32::from(dscp) << 2;
        match addr {
            SocketAddr::V4(_) => socket.set_tos_v4(tos)?,
            SocketAddr::V6(_) => socket.set_tclass_v6(tos)?,
        }
    }
    socket.set_nonblocking(true)?;
    tokio::net::TcpSocket::from_std_stream(socket.into()).connect(addr).await
}

impl ModbusDriver {
    /// Runs one request; a transport failure drops the connection so the next request
    /// reconnects.
    async fn with<T>(
        &self,
        op: impl for<'c> FnOnce(
            &'c mut Context,
        )
            -> BoxFuture<'c, Result<Result<T, tokio_modbus::ExceptionCode>, tokio_modbus::Error>>,
    ) -> Result<T, DriverError> {
        let mut guard = self.ctx.lock().await;
        if guard.is_none() {
            *guard = Some(self.connect().await?);
        }
        let ctx = guard.as_mut().ok_or_else(|| DriverError::Unreachable(self.target.clone()))?;
        ctx.set_slave(self.unit.into());
        match tokio::time::timeout(self.timeout, op(ctx)).await {
            Err(_) => {
                *guard = None;
                Err(DriverError::Timeout(self.timeout))
            }
            // Sent on a connection that broke before the answer came.
            Ok(Err(e)) => {
                *guard = None;
                Err(DriverError::Lost(format!("{}: {e}", self.target)))
            }
            Ok(Ok(Err(exception))) => Err(DriverError::Exception(format!("{exception:?}"))),
            Ok(Ok(Ok(v))) => Ok(v),
        }
    }
}

fn mapping(p: &PropertyConfig) -> Result<&ModbusMapping, DriverError> {
    p.modbus
        .as_ref()
        .filter(|m| m.table() != ModbusTable::Unspecified)
        .ok_or_else(|| DriverError::Unmapped(p.name.clone()))
}

fn address(m: &ModbusMapping) -> Result<u16, DriverError> {
    u16::try_from(m.address).map_err(|_| DriverError::Value(format!("address {} is beyond 65535", m.address)))
}

impl Driver for ModbusDriver {
    fn read<'a>(&'a self, p: &'a PropertyConfig) -> BoxFuture<'a, Result<Value, DriverError>> {
        Box::pin(async move {
            let m = mapping(p)?;
            let addr = address(m)?;
            let n = width(m.register_type());
            match m.table() {
                ModbusTable::Coil => {
                    let bits = self.with(|c| Box::pin(c.read_coils(addr, 1))).await?;
                    Ok(value::bool_value(bits.first().copied().unwrap_or(false)))
                }
                ModbusTable::DiscreteInput => {
                    let bits = self.with(|c| Box::pin(c.read_discrete_inputs(addr, 1))).await?;
                    Ok(value::bool_value(bits.first().copied().unwrap_or(false)))
                }
                ModbusTable::InputRegister => {
                    let regs = self.with(|c| Box::pin(c.read_input_registers(addr, n))).await?;
                    decode(m, p.r#type(), &regs)
                }
                ModbusTable::HoldingRegister => {
                    let regs = self.with(|c| Box::pin(c.read_holding_registers(addr, n))).await?;
                    decode(m, p.r#type(), &regs)
                }
                ModbusTable::Unspecified => Err(DriverError::Unmapped(p.name.clone())),
            }
        })
    }

    fn write<'a>(&'a self, p: &'a PropertyConfig, v: &'a Value) -> BoxFuture<'a, Result<(), DriverError>> {
        Box::pin(async move {
            let m = mapping(p)?;
            let addr = address(m)?;
            match m.table() {
                ModbusTable::Coil => {
                    let b = value::as_bool(v).ok_or_else(|| DriverError::Value(format!("{} is not a bool", p.name)))?;
                    self.with(|c| Box::pin(c.write_single_coil(addr, b))).await
                }
                ModbusTable::HoldingRegister => {
                    let regs = encode(m, p.r#type(), v)?;
                    if regs.len() == 1 {
                        self.with(|c| Box::pin(c.write_single_register(addr, regs[0]))).await
                    } else {
                        self.with(|c| Box::pin(async move { c.write_multiple_registers(addr, &regs).await })).await
                    }
                }
                _ => Err(DriverError::Value(format!("{} maps to a read-only table", p.name))),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(rt: RegisterType, scale: f64, offset: f64) -> ModbusMapping {
        ModbusMapping {
            table: ModbusTable::HoldingRegister as i32,
            address: 0,
            register_type: rt as i32,
            scale,
            offset,
        }
    }

    #[test]
    fn layouts_round_trip_with_scale_and_offset() {
        let cases = [
            (m(RegisterType::U16, 0.01, 0.0), ValueType::Float, 1.25),
            (m(RegisterType::I16, 0.1, -40.0), ValueType::Float, -12.5),
            (m(RegisterType::U32, 1.0, 0.0), ValueType::Int, 123_456.0),
            (m(RegisterType::I32, 1.0, 0.0), ValueType::Int, -70_000.0),
            (m(RegisterType::F32, 1.0, 0.0), ValueType::Float, 180.5),
        ];
        for (mapping, ty, x) in cases {
            let regs = encode(&mapping, ty, &value::float_value(x)).expect("encode");
            let back = decode(&mapping, ty, &regs).expect("decode");
            assert!(
                (value::as_f64(&back).expect("number") - x).abs() < 1e-6,
                "{mapping:?}: {x} -> {regs:?} -> {back:?}"
            );
        }
    }

    #[test]
    fn values_that_do_not_fit_the_register_are_refused_not_wrapped() {
        assert!(encode(&m(RegisterType::U16, 0.01, 0.0), ValueType::Float, &value::float_value(700.0)).is_err());
        assert!(encode(&m(RegisterType::U16, 1.0, 0.0), ValueType::Int, &value::int_value(-1)).is_err());
    }
}
