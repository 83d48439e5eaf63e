//! The edge agent. Enrolment and the edge channel land with the sessions work (issue 4).
fn main() -> anyhow::Result<()> {
    anyhow::bail!("drawbridge-edge is not implemented yet; see ARCHITECTURE.md")
}
