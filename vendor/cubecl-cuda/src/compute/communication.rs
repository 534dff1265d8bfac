use std::{collections::HashMap, sync::OnceLock};

use cubecl_core::{
    device::DeviceId,
    ir::ElemType,
    server::{CommunicationId, ReduceOperation},
    stub::Mutex,
};

/// Global state map from [`CommunicationId`] to boxed [`cudarc::nccl::sys::ncclUniqueId`].
static UNIQUE_IDS_MAP: OnceLock<Mutex<HashMap<CommunicationId, cudarc::nccl::sys::ncclUniqueId>>> =
    OnceLock::new();

pub(crate) fn get_nccl_comm_id(device_ids: Vec<DeviceId>) -> cudarc::nccl::sys::ncclUniqueId {
    let mut unique_ids_map = UNIQUE_IDS_MAP.get_or_init(Default::default).lock().unwrap();
    let comm_id = CommunicationId::from(device_ids);
    match unique_ids_map.get_mut(&comm_id) {
        Some(id) => *id,
        None => {
            let id = cudarc::nccl::result::get_uniqueid().unwrap();
            unique_ids_map.insert(comm_id, id);
            id
        }
    }
}

pub(crate) fn to_nccl_op(op: ReduceOperation) -> cudarc::nccl::sys::ncclRedOp_t {
    match op {
        ReduceOperation::Sum => cudarc::nccl::sys::ncclRedOp_t::ncclSum,
        ReduceOperation::Mean => cudarc::nccl::sys::ncclRedOp_t::ncclAvg,
    }
}

pub(crate) fn get_nccl_dtype_count(
    dtype: ElemType,
    size: u64,
) -> (cudarc::nccl::sys::ncclDataType_t, usize) {
    match dtype {
        ElemType::Float(
            cubecl_core::ir::FloatKind::E2M1
            | cubecl_core::ir::FloatKind::E2M3
            | cubecl_core::ir::FloatKind::E3M2
            | cubecl_core::ir::FloatKind::UE8M0,
        ) => panic!("Minifloat not supported in NCCL"),
        ElemType::Float(cubecl_core::ir::FloatKind::E4M3) => (
            cudarc::nccl::sys::ncclDataType_t::ncclFloat8e4m3,
            size as usize,
        ),
        ElemType::Float(cubecl_core::ir::FloatKind::E5M2) => (
            cudarc::nccl::sys::ncclDataType_t::ncclFloat8e5m2,
            size as usize,
        ),
        ElemType::Float(cubecl_core::ir::FloatKind::F16) => (
            cudarc::nccl::sys::ncclDataType_t::ncclFloat16,
            (size / 2) as usize,
        ),
        ElemType::Float(cubecl_core::ir::FloatKind::BF16) => (
            cudarc::nccl::sys::ncclDataType_t::ncclBfloat16,
            (size / 2) as usize,
        ),
        ElemType::Float(cubecl_core::ir::FloatKind::Flex32) => {
            panic!("NCCL doesn't support Flex32 format.")
        }

        ElemType::Float(cubecl_core::ir::FloatKind::F32) => (
            cudarc::nccl::sys::ncclDataType_t::ncclFloat32,
            (size / 4) as usize,
        ),
        ElemType::Float(cubecl_core::ir::FloatKind::TF32) => {
            panic!("NCCL doesn't support TF32 format.")
        }
        ElemType::Float(cubecl_core::ir::FloatKind::F64) => (
            cudarc::nccl::sys::ncclDataType_t::ncclFloat64,
            (size / 8) as usize,
        ),
        ElemType::Int(int_kind) => match int_kind {
            cubecl_core::ir::IntKind::I8 => {
                (cudarc::nccl::sys::ncclDataType_t::ncclInt8, size as usize)
            }
            cubecl_core::ir::IntKind::I16 => panic!("NCCL doesn't support Int16 format."),
            cubecl_core::ir::IntKind::I32 => (
                cudarc::nccl::sys::ncclDataType_t::ncclInt32,
                (size / 4) as usize,
            ),
            cubecl_core::ir::IntKind::I64 => (
                cudarc::nccl::sys::ncclDataType_t::ncclInt64,
                (size / 8) as usize,
            ),
        },
        ElemType::UInt(uint_kind) => match uint_kind {
            cubecl_core::ir::UIntKind::U8 => {
                (cudarc::nccl::sys::ncclDataType_t::ncclUint8, size as usize)
            }
            cubecl_core::ir::UIntKind::U16 => panic!("NCCL doesn't support UInt16 format."),
            cubecl_core::ir::UIntKind::U32 => (
                cudarc::nccl::sys::ncclDataType_t::ncclUint32,
                (size / 4) as usize,
            ),
            cubecl_core::ir::UIntKind::U64 => (
                cudarc::nccl::sys::ncclDataType_t::ncclUint64,
                (size / 8) as usize,
            ),
        },
        ElemType::Bool => panic!("NCCL doesn't support Bool format."),
    }
}

// swav-rs patch: NCCL groups spanning processes and hosts.
//
// As published, a communicator's unique id is made in the process (`get_nccl_comm_id`) and a
// device's rank is its position among the process's devices, so a group never extends beyond
// one process. A group registered here instead uses an id made by one process of the run and
// sent to the others (`nccl_unique_id` in the first process, then `join_process_group` in
// every process), each device taking the global rank given for it.

/// A process's part of a group spanning processes: the id every process of the group uses, the
/// number of ranks over all processes and the global rank of each of this process's devices.
#[derive(Clone)]
struct ProcessGroup {
    id: cudarc::nccl::sys::ncclUniqueId,
    world: usize,
    ranks: HashMap<DeviceId, usize>,
}

static PROCESS_GROUPS: OnceLock<Mutex<HashMap<CommunicationId, ProcessGroup>>> = OnceLock::new();

/// A new NCCL unique id (its 128 bytes), made once by the first process of a group spanning
/// processes and sent to the others. Loads NCCL.
pub fn nccl_unique_id() -> Result<Vec<u8>, String> {
    let id = cudarc::nccl::result::get_uniqueid().map_err(|e| format!("ncclGetUniqueId: {e:?}"))?;
    Ok(id.internal.iter().map(|&c| c as u8).collect())
}

/// Register this process's part of a group spanning processes: `all_reduce` calls whose device
/// list is `key` then run on a communicator made from `unique_id` (the 128 bytes from
/// [`nccl_unique_id`]), of `world` ranks, device `ranks[i].0` holding global rank `ranks[i].1`.
/// `key` must differ from every device list used by groups within one process.
pub fn join_process_group(
    key: Vec<DeviceId>,
    unique_id: &[u8],
    world: usize,
    ranks: &[(DeviceId, usize)],
) -> Result<(), String> {
    let internal: [core::ffi::c_char; 128] = unique_id
        .iter()
        .map(|&b| b as core::ffi::c_char)
        .collect::<Vec<_>>()
        .try_into()
        .map_err(|v: Vec<_>| format!("an NCCL unique id has 128 bytes, not {}", v.len()))?;
    if let Some((_, r)) = ranks.iter().find(|(_, r)| *r >= world) {
        return Err(format!("rank {r} in a group of {world}"));
    }
    let group = ProcessGroup {
        id: cudarc::nccl::sys::ncclUniqueId { internal },
        world,
        ranks: ranks.iter().cloned().collect(),
    };
    PROCESS_GROUPS
        .get_or_init(Default::default)
        .lock()
        .unwrap()
        .insert(CommunicationId::from(key), group);
    Ok(())
}

/// The unique id, world size and rank of `device` in the group spanning processes registered
/// under `comm_id`, if there is one.
pub(crate) fn process_group_rank(
    comm_id: &CommunicationId,
    device: DeviceId,
) -> Option<(cudarc::nccl::sys::ncclUniqueId, usize, usize)> {
    let groups = PROCESS_GROUPS.get_or_init(Default::default).lock().unwrap();
    let group = groups.get(comm_id)?;
    let rank = *group.ranks.get(&device)?;
    Some((group.id, group.world, rank))
}
