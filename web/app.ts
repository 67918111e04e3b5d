/** The shoal playground: tabs, and the Chat, server and Plan views wired together. */
import { setApiKey } from './api.js';
import { ChatView } from './chat.js';
import { byId } from './dom.js';
import { LocalRunner } from './local.js';
import { PlanView } from './plan.js';
import { StatsPanel } from './stats.js';

type Tab = 'chat' | 'plan';

function main(): void {
  const stats = new StatsPanel();
  const local = new LocalRunner();
  new ChatView({
    local,
    expertsPerToken: () => stats.stats?.model.experts_per_token ?? 1,
    modelName: () => stats.stats?.model.name ?? null,
    onApiKey: setApiKey,
  });
  const plan = new PlanView();

  const tabs: Record<Tab, { button: HTMLButtonElement; view: HTMLElement }> = {
    chat: { button: byId<HTMLButtonElement>('tab-chat'), view: byId('view-chat') },
    plan: { button: byId<HTMLButtonElement>('tab-plan'), view: byId('view-plan') },
  };
  const show = (tab: Tab) => {
    for (const [name, t] of Object.entries(tabs)) {
      const on = name === tab;
      t.button.setAttribute('aria-selected', String(on));
      t.view.hidden = !on;
    }
    if (tab === 'plan') void plan.load();
    if (location.hash !== `#${tab}`) history.replaceState(null, '', `#${tab}`);
  };
  for (const [name, t] of Object.entries(tabs)) t.button.addEventListener('click', () => show(name as Tab));
  show(location.hash === '#plan' ? 'plan' : 'chat');
  stats.start();
  document.body.classList.add('ready');
}

main();
