import { backendConformance } from './conformance.js';
import { CpuBackend } from '../src/backends/cpu/cpu-backend.js';

backendConformance('cpu', () => new CpuBackend());
