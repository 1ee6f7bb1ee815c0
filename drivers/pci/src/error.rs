//! The crate's error type.

/// What went wrong with a PCI operation.
///
/// Enumeration itself rarely fails as a whole: a BAR that cannot be placed keeps its error in
/// its [`BarSlot`](crate::BarSlot) and the scan goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PciError {
    /// The ECAM window is not a whole number of 1 MiB bus slices, or is empty.
    BadEcamWindow,
    /// A resource window is empty, overflows, or (for the 32-bit memory window) reaches above
    /// 4 GiB in PCI address space.
    BadWindow,
    /// No space was left in the window the BAR (or bridge window) had to come from.
    WindowExhausted,
    /// The BAR needs a kind of window that was not given (I/O BARs without an I/O window).
    NoWindow,
    /// The BAR's type field is reserved, or a 64-bit BAR starts in the last slot.
    InvalidBar,
    /// The BAR index is beyond the header's BARs, or the slot is the upper half of a 64-bit
    /// BAR, or the BAR is not implemented.
    NoSuchBar,
    /// The BAR exists but has no address (its assignment failed).
    BarNotAssigned,
    /// The operation needs a memory BAR and this one decodes I/O space.
    NotMemoryBar,
    /// The platform's mapper refused the range.
    MapFailed,
    /// The function lacks the capability the operation needs (MSI, MSI-X, ...).
    NoCapability,
    /// The MSI capability only holds 32-bit addresses and the message's address is above 4 GiB.
    AddressTooWide,
    /// The message data does not fit the MSI data register (16 bits).
    DataTooWide,
    /// The vector index is beyond the table (or beyond the enabled MSI vectors).
    VectorOutOfRange,
    /// The MSI-X table or PBA does not fit inside its BAR.
    TableOutsideBar,
    /// More functions were found than the list holds; the rest stay with decoding disabled.
    TooManyFunctions,
    /// The bus range of the ECAM window ran out while numbering bridges.
    OutOfBusNumbers,
}
