/** Concurrency limits: how many tasks may run at once, in all and per agent. 0 means no limit. */
export interface ConcurrencyLimits {
  global: number;
  perAgent: number;
  overrides: Map<string, number>;
}

/** The limit of one agent: its override, else the per-agent default. */
export function agentLimit(limits: ConcurrencyLimits, agentId: string): number {
  return limits.overrides.get(agentId) ?? limits.perAgent;
}

export function hasLimits(limits: ConcurrencyLimits): boolean {
  return limits.global > 0 || limits.perAgent > 0 || [...limits.overrides.values()].some((l) => l > 0);
}

/** Running counts, in all and per agent, that claims update as they take slots. */
export class SlotCounts {
  constructor(
    private readonly limits: ConcurrencyLimits,
    private total: number,
    private readonly byAgent: Map<string, number>,
  ) {}

  /** Whether nothing more may start anywhere. */
  get full(): boolean {
    return this.limits.global > 0 && this.total >= this.limits.global;
  }

  /** Whether one more task of this agent may start. */
  hasSlot(agentId: string): boolean {
    if (this.full) return false;
    const limit = agentLimit(this.limits, agentId);
    return limit === 0 || (this.byAgent.get(agentId) ?? 0) < limit;
  }

  /** The agents with tasks running that have no free slot left. */
  fullAgents(): string[] {
    return [...this.byAgent.keys()].filter((agentId) => !this.hasSlot(agentId));
  }

  take(agentId: string): void {
    this.total++;
    this.byAgent.set(agentId, (this.byAgent.get(agentId) ?? 0) + 1);
  }
}
