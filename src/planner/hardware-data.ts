/**
 * Accelerator catalog for `shoal plan`.
 *
 * Every figure carries its source. `note` says when a figure is an estimate (ours or a third
 * party's) or only an announcement (a chip not yet shipping, or a vendor slide). Throughputs are
 * DENSE peak tensor-core/cube rates (no 2:4 sparsity) per chip (per package, all dies).
 * Link bandwidths are UNIDIRECTIONAL per chip (what one chip can send while it also receives),
 * because an all-to-all sends and receives the same volume at the same time.
 *
 * Prices are defaults for `--price-per-hour`; they are rough market/rental figures, never
 * vendor list prices, and are always marked as estimates.
 */

export interface Figure {
  value: number;
  /** Datasheet, paper or page the figure comes from (as text). */
  source: string;
  /** Present when the figure is an estimate, a derivation or an announcement. */
  note?: string;
}

export type Precision = 'bf16' | 'fp8' | 'int8' | 'fp4';

export interface ChipSpec {
  name: string;
  vendor: string;
  description: string;
  status: 'shipping' | 'announced' | 'measured';
  /** Dense peak TFLOPS (TOPS for int8) per precision; absent when the chip has no such unit. */
  tflops: Partial<Record<Precision, Figure>>;
  memoryGB: Figure;
  /** HBM (or DRAM) bandwidth, GB/s. */
  memoryBandwidthGBs: Figure;
  /** Scale-up fabric (NVLink, HCCS, UB, Infinity Fabric) per chip, GB/s, one direction. */
  scaleUpGBs: Figure;
  /** How many chips share one scale-up domain (8 in an HGX box, 384 in CloudMatrix384). */
  scaleUpDomain: Figure;
  /** Scale-out network (InfiniBand/RoCE NIC share) per chip, GB/s, one direction. */
  scaleOutGBs: Figure;
  /** Board/module power at full load, W. */
  powerW: Figure;
  /** Default rental price, USD per chip-hour. */
  pricePerHour: Figure;
  /**
   * Independent devices the package exposes to software. The Ascend 910C is two 910B-class dies,
   * each its own NPU rank with its own HBM (CloudMatrix-Infer runs one rank per die); B200 and
   * MI300X present one device per package.
   */
  ranksPerChip: number;
}

const NV_H100_DS = 'NVIDIA H100 Tensor Core GPU datasheet (nvidia.com/en-us/data-center/h100), SXM column';
const NV_H200_DS = 'NVIDIA H200 Tensor Core GPU datasheet (nvidia.com/en-us/data-center/h200), SXM column';
const NV_B200_DS = 'NVIDIA HGX B200 / DGX B200 datasheet (nvidia.com/en-us/data-center/hgx), per-GPU figures';
const NV_H20 = 'NVIDIA H20 specification as reported by LMSYS/Ant Group, "Best Practices for Serving DeepSeek-R1 on H20-96G" (lmsys.org/blog/2025-09-26-sglang-ant-group) and SemiAnalysis H20 coverage';
const DS_V3 = 'DeepSeek-V3 Technical Report (arXiv:2412.19437) §3.1 cluster description';
const DS_INFER = 'DeepSeek "Day 6: DeepSeek-V3/R1 Inference System Overview" (github.com/deepseek-ai/open-infra-index, 2025-03-01)';
const CM384 = 'Zuo et al., "Serving Large Language Models on Huawei CloudMatrix384" (arXiv:2506.12708) §3';
const HW_CONNECT = 'Huawei Connect 2025 keynote (Eric Xu, 2025-09-18): Ascend 950PR/950DT roadmap';
const AMD_MI300X = 'AMD Instinct MI300X data sheet (amd.com/en/products/accelerators/instinct/mi300/mi300x.html)';
const HGX_NIC = 'HGX reference design: one 400 Gb/s ConnectX-7 NIC per GPU (= 50 GB/s)';

export const CHIPS: ChipSpec[] = [
  {
    name: 'ascend-910b',
    vendor: 'Huawei',
    description: 'Ascend 910B (910B2 bin), Atlas 800T/800I A2 8-NPU server',
    status: 'shipping',
    tflops: {
      bf16: { value: 376, source: CM384, note: 'estimate: half of the 910C package figure (one 910C die = one 910B-class die); 910B bins range 280-376' },
      int8: { value: 752, source: CM384, note: 'estimate: 2x BF16, the Da Vinci cube INT8:FP16 ratio' },
    },
    memoryGB: { value: 64, source: 'Huawei Atlas 800I A2 inference server spec sheet (e.huawei.com), 64 GB HBM2e per NPU' },
    memoryBandwidthGBs: { value: 1600, source: CM384, note: 'per-die HBM bandwidth of the 910C (3.2 TB/s / 2); third-party reports 1.6 TB/s for 910B' },
    scaleUpGBs: { value: 196, source: 'Huawei Atlas 800T A2 spec: HCCS full mesh, 392 GB/s per NPU', note: 'estimate: 392 GB/s taken as bidirectional, halved' },
    scaleUpDomain: { value: 8, source: 'Atlas 800 A2: 8 NPUs per HCCS mesh' },
    scaleOutGBs: { value: 25, source: 'Atlas 800 A2: 8x 200GE RoCE ports, one per NPU (= 25 GB/s)' },
    powerW: { value: 400, source: 'third-party teardown reports (TechInsights/SemiAnalysis)', note: 'estimate' },
    pricePerHour: { value: 1.2, source: 'Chinese cloud rental listings, 2025', note: 'estimate' },
    ranksPerChip: 1,
  },
  {
    name: 'ascend-910c',
    vendor: 'Huawei',
    description: 'Ascend 910C (two dies per package) in a CloudMatrix384 supernode',
    status: 'shipping',
    tflops: {
      bf16: { value: 752, source: CM384 + ': "752 TFLOPS dense BF16/FP16 per package"' },
      int8: { value: 1504, source: CM384 + ': implied by its efficiency ratios (6,688 tokens/s per NPU = 4.45 tokens/s/TFLOPS, 1,943 = 1.29)', note: 'derived: 2x BF16, the Da Vinci cube INT8:FP16 ratio' },
    },
    memoryGB: { value: 128, source: CM384 + ': 128 GB on-package HBM (64 GB per die)' },
    memoryBandwidthGBs: { value: 3200, source: CM384 + ': 3.2 TB/s per package (1.6 TB/s per die)' },
    scaleUpGBs: { value: 392, source: CM384 + ': UB plane, "over 392 GB/s of unidirectional bandwidth" per NPU' },
    scaleUpDomain: { value: 384, source: CM384 + ': 384 NPUs on one non-blocking UB fabric' },
    scaleOutGBs: { value: 50, source: CM384 + ': RDMA plane, up to 400 Gb/s per NPU' },
    powerW: { value: 750, source: 'SemiAnalysis "Huawei AI CloudMatrix 384" (2025): ~559 kW per 384-NPU system incl. optics and CPUs', note: 'estimate for the package alone' },
    pricePerHour: { value: 2.0, source: 'Huawei Cloud Ascend cloud service pricing reports, 2025', note: 'estimate' },
    ranksPerChip: 2,
  },
  {
    name: 'ascend-950pr',
    vendor: 'Huawei',
    description: 'Ascend 950PR (prefill/recommendation part, HiBL 1.0 memory), planned Q1 2026',
    status: 'announced',
    tflops: {
      bf16: { value: 500, source: HW_CONNECT, note: 'estimate: half of the announced FP8 rate' },
      fp8: { value: 1000, source: HW_CONNECT + ': "1 PFLOPS FP8"', note: 'announcement' },
      int8: { value: 1000, source: HW_CONNECT, note: 'estimate: equal to FP8' },
      fp4: { value: 2000, source: HW_CONNECT + ': "2 PFLOPS FP4"', note: 'announcement' },
    },
    memoryGB: { value: 128, source: HW_CONNECT + ': HiBL 1.0, 128 GB', note: 'announcement' },
    memoryBandwidthGBs: { value: 1600, source: HW_CONNECT + ': HiBL 1.0, 1.6 TB/s', note: 'announcement' },
    scaleUpGBs: { value: 1000, source: HW_CONNECT + ': "2 TB/s interconnect"', note: 'announcement, taken as bidirectional and halved' },
    scaleUpDomain: { value: 8192, source: HW_CONNECT + ': Atlas 950 SuperPoD, 8,192 NPUs', note: 'announcement' },
    scaleOutGBs: { value: 50, source: 'assumed equal to 910C RDMA plane', note: 'estimate' },
    powerW: { value: 600, source: 'no public figure', note: 'estimate' },
    pricePerHour: { value: 1.5, source: 'no public figure', note: 'estimate' },
    ranksPerChip: 1,
  },
  {
    name: 'ascend-950dt',
    vendor: 'Huawei',
    description: 'Ascend 950DT (decode/training part, HiZQ 2.0 memory), planned Q4 2026',
    status: 'announced',
    tflops: {
      bf16: { value: 500, source: HW_CONNECT, note: 'estimate: half of the announced FP8 rate' },
      fp8: { value: 1000, source: HW_CONNECT + ': "1 PFLOPS FP8"', note: 'announcement' },
      int8: { value: 1000, source: HW_CONNECT, note: 'estimate: equal to FP8' },
      fp4: { value: 2000, source: HW_CONNECT + ': "2 PFLOPS FP4"', note: 'announcement' },
    },
    memoryGB: { value: 144, source: HW_CONNECT + ': HiZQ 2.0, 144 GB', note: 'announcement' },
    memoryBandwidthGBs: { value: 4000, source: HW_CONNECT + ': HiZQ 2.0, 4 TB/s', note: 'announcement' },
    scaleUpGBs: { value: 1000, source: HW_CONNECT + ': "2 TB/s interconnect"', note: 'announcement, taken as bidirectional and halved' },
    scaleUpDomain: { value: 8192, source: HW_CONNECT + ': Atlas 950 SuperPoD, 8,192 NPUs', note: 'announcement' },
    scaleOutGBs: { value: 50, source: 'assumed equal to 910C RDMA plane', note: 'estimate' },
    powerW: { value: 700, source: 'no public figure', note: 'estimate' },
    pricePerHour: { value: 2.0, source: 'no public figure', note: 'estimate' },
    ranksPerChip: 1,
  },
  {
    name: 'h20',
    vendor: 'NVIDIA',
    description: 'H20 96 GB (China-market Hopper), HGX 8-GPU',
    status: 'shipping',
    tflops: {
      bf16: { value: 148, source: NV_H20 },
      fp8: { value: 296, source: NV_H20 },
      int8: { value: 296, source: NV_H20 },
    },
    memoryGB: { value: 96, source: NV_H20 },
    memoryBandwidthGBs: { value: 4000, source: NV_H20 },
    scaleUpGBs: { value: 450, source: NV_H20 + ': NVLink 900 GB/s bidirectional' },
    scaleUpDomain: { value: 8, source: 'HGX 8-GPU baseboard' },
    scaleOutGBs: { value: 50, source: HGX_NIC },
    powerW: { value: 400, source: NV_H20 },
    pricePerHour: { value: 1.0, source: 'cloud rental listings, 2025', note: 'estimate' },
    ranksPerChip: 1,
  },
  {
    name: 'h800',
    vendor: 'NVIDIA',
    description: 'H800 SXM 80 GB (export Hopper, reduced NVLink), HGX 8-GPU',
    status: 'shipping',
    tflops: {
      bf16: { value: 989, source: NV_H100_DS + ' (H800 SXM has the H100 SXM tensor rates)' },
      fp8: { value: 1979, source: NV_H100_DS + ' (H800 SXM has the H100 SXM tensor rates)' },
      int8: { value: 1979, source: NV_H100_DS + ' (H800 SXM has the H100 SXM tensor rates)' },
    },
    memoryGB: { value: 80, source: NV_H100_DS },
    memoryBandwidthGBs: { value: 3350, source: NV_H100_DS },
    scaleUpGBs: { value: 200, source: 'NVIDIA H800 SXM: NVLink 400 GB/s bidirectional; ' + DS_V3 + ' measures ~160 GB/s achievable' },
    scaleUpDomain: { value: 8, source: DS_V3 + ': 8 GPUs per node over NVLink/NVSwitch' },
    scaleOutGBs: { value: 50, source: DS_V3 + ': 400 Gb/s InfiniBand (CX7) per GPU' },
    powerW: { value: 700, source: NV_H100_DS },
    pricePerHour: { value: 2.0, source: DS_INFER + ': "assuming the leasing cost of one H800 GPU is $2 per hour"' },
    ranksPerChip: 1,
  },
  {
    name: 'h100',
    vendor: 'NVIDIA',
    description: 'H100 SXM 80 GB, HGX 8-GPU',
    status: 'shipping',
    tflops: {
      bf16: { value: 989, source: NV_H100_DS },
      fp8: { value: 1979, source: NV_H100_DS },
      int8: { value: 1979, source: NV_H100_DS },
    },
    memoryGB: { value: 80, source: NV_H100_DS },
    memoryBandwidthGBs: { value: 3350, source: NV_H100_DS },
    scaleUpGBs: { value: 450, source: NV_H100_DS + ': NVLink 900 GB/s bidirectional' },
    scaleUpDomain: { value: 8, source: 'HGX H100 8-GPU baseboard' },
    scaleOutGBs: { value: 50, source: HGX_NIC },
    powerW: { value: 700, source: NV_H100_DS },
    pricePerHour: { value: 2.0, source: 'LMSYS "Deploying DeepSeek ... on 96 H100 GPUs" (2025-05-05) cost figure implies $2/GPU-hour', note: 'estimate (market rental)' },
    ranksPerChip: 1,
  },
  {
    name: 'h200',
    vendor: 'NVIDIA',
    description: 'H200 SXM 141 GB, HGX 8-GPU',
    status: 'shipping',
    tflops: {
      bf16: { value: 989, source: NV_H200_DS },
      fp8: { value: 1979, source: NV_H200_DS },
      int8: { value: 1979, source: NV_H200_DS },
    },
    memoryGB: { value: 141, source: NV_H200_DS },
    memoryBandwidthGBs: { value: 4800, source: NV_H200_DS },
    scaleUpGBs: { value: 450, source: NV_H200_DS + ': NVLink 900 GB/s bidirectional' },
    scaleUpDomain: { value: 8, source: 'HGX H200 8-GPU baseboard' },
    scaleOutGBs: { value: 50, source: HGX_NIC },
    powerW: { value: 700, source: NV_H200_DS },
    pricePerHour: { value: 3.0, source: 'cloud rental listings, 2025', note: 'estimate' },
    ranksPerChip: 1,
  },
  {
    name: 'b200',
    vendor: 'NVIDIA',
    description: 'B200 180 GB (HGX/DGX B200, 1000 W)',
    status: 'shipping',
    tflops: {
      bf16: { value: 2250, source: NV_B200_DS + ' (4.5 PFLOPS with sparsity, halved)' },
      fp8: { value: 4500, source: NV_B200_DS + ' (9 PFLOPS with sparsity, halved)' },
      int8: { value: 4500, source: NV_B200_DS + ' (9 POPS with sparsity, halved)' },
      fp4: { value: 9000, source: NV_B200_DS + ' (18 PFLOPS with sparsity, halved)' },
    },
    memoryGB: { value: 180, source: NV_B200_DS },
    memoryBandwidthGBs: { value: 7700, source: NV_B200_DS + ' (HGX B200: 62 TB/s per 8 GPUs)' },
    scaleUpGBs: { value: 900, source: NV_B200_DS + ': NVLink 5, 1.8 TB/s bidirectional' },
    scaleUpDomain: { value: 8, source: 'HGX B200 8-GPU baseboard (NVL72 racks have 72)' },
    scaleOutGBs: { value: 50, source: HGX_NIC },
    powerW: { value: 1000, source: NV_B200_DS },
    pricePerHour: { value: 5.0, source: 'cloud rental listings, 2025', note: 'estimate' },
    ranksPerChip: 1,
  },
  {
    name: 'mi300x',
    vendor: 'AMD',
    description: 'Instinct MI300X 192 GB, 8-GPU OAM platform',
    status: 'shipping',
    tflops: {
      bf16: { value: 1307, source: AMD_MI300X },
      fp8: { value: 2615, source: AMD_MI300X },
      int8: { value: 2615, source: AMD_MI300X },
    },
    memoryGB: { value: 192, source: AMD_MI300X },
    memoryBandwidthGBs: { value: 5300, source: AMD_MI300X },
    scaleUpGBs: { value: 448, source: AMD_MI300X + ': 7 Infinity Fabric links, 896 GB/s aggregate bidirectional' },
    scaleUpDomain: { value: 8, source: 'AMD Instinct MI300X platform: 8 GPUs fully connected' },
    scaleOutGBs: { value: 50, source: 'one 400 Gb/s NIC per GPU (typical MI300X cluster build)', note: 'estimate' },
    powerW: { value: 750, source: AMD_MI300X },
    pricePerHour: { value: 2.0, source: 'cloud rental listings, 2025', note: 'estimate' },
    ranksPerChip: 1,
  },
];
