//! Small plants the scenarios and benchmarks share.

/// Agent `plant-a/line-1` driving one simulated robot cell with a writable `program` (1–32).
pub const ROBOT_CELL: &str = r#"
apiVersion: shopfloor.io/v1alpha1
kind: EdgeAgent
metadata: {name: line-1, namespace: plant-a}
spec: {site: plant-a/line-1}
---
apiVersion: shopfloor.io/v1alpha1
kind: Equipment
metadata: {name: robot, namespace: plant-a}
spec:
  agentRef: {name: line-1}
  simulated: {}
  properties:
    - {name: program, type: Int, access: ReadWrite, min: 1, max: 32}
"#;

/// A ControlCommand `name` setting the robot's program to 7, with a `timeout` like `30s`.
pub fn robot_command(name: &str, timeout: &str) -> String {
    format!(
        "apiVersion: shopfloor.io/v1alpha1\nkind: ControlCommand\nmetadata: {{name: {name}, namespace: plant-a}}\n\
         spec: {{equipmentRef: {{name: robot}}, action: write, parameters: {{property: program, value: 7}}, timeout: {timeout}}}\n"
    )
}

/// `n` agents `plant-a/line-<i>`, each driving one simulated robot cell `robot-<i>` like
/// [`ROBOT_CELL`]'s, and a command named `template` (for `robot-1`) to clone from.
pub fn robot_cells(n: usize, timeout: &str) -> String {
    let mut out = String::new();
    for i in 1..=n {
        out.push_str(
            &ROBOT_CELL.replace("line-1", &format!("line-{i}")).replace("name: robot,", &format!("name: robot-{i},")),
        );
        out.push_str("---\n");
    }
    out + &robot_command("template", timeout).replace("name: robot}", "name: robot-1}")
}

/// [`ROBOT_CELL`] with a command named `template` to clone from.
pub fn robot_cell_with_template(timeout: &str) -> String {
    format!("{ROBOT_CELL}---\n{}", robot_command("template", timeout))
}

/// Agent `plant-a/line-1` driving a Modbus TCP conveyor on the simulator at `port`, read every
/// `reporting` (e.g. `1s`): `belt-speed` (holding register 0, ×0.01 m/s, 0–2.5), `running`
/// (coil 0), and an action `start` writing both.
pub fn modbus_conveyor(port: &str, reporting: &str) -> String {
    CONVEYOR.replace("@REPORTING@", reporting).replace("@PORT@", port)
}

const CONVEYOR: &str = r#"apiVersion: shopfloor.io/v1alpha1
kind: EdgeAgent
metadata: {name: line-1, namespace: plant-a}
spec: {site: plant-a/line-1}
---
apiVersion: shopfloor.io/v1alpha1
kind: Equipment
metadata: {name: conveyor, namespace: plant-a}
spec:
  agentRef: {name: line-1}
  modbusTcp: {host: "127.0.0.1", port: @PORT@, timeout: 5s}
  reporting: {interval: @REPORTING@}
  properties:
    - {name: belt-speed, type: Float, access: ReadWrite, modbus: {table: HoldingRegister, address: 0, scale: 0.01}, min: 0, max: 2.5}
    - {name: running, type: Bool, access: ReadWrite, modbus: {table: Coil, address: 0}}
  actions:
    - name: start
      parameters: [{name: speed, type: Float, min: 0.1, max: 2.5, required: true}]
      writes: [{property: belt-speed, parameter: speed}, {property: running, value: true}]
      timeout: 20s
"#;
